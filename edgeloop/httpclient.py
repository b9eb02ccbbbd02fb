"""The CLI's client for the hub's HTTP API; errors become one clear line, not a traceback."""

from __future__ import annotations

import os

import httpx
import typer

DEFAULT_HUB = os.environ.get("EDGELOOP_HUB", "http://127.0.0.1:8700")


def get(hub: str, path: str, **params: object) -> object:
    try:
        r = httpx.get(f"{hub.rstrip('/')}{path}", params={k: v for k, v in params.items() if v is not None}, timeout=30)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the hub at {hub}: {exc}", err=True)
        raise typer.Exit(3) from None
    if r.status_code == 404:
        typer.echo(f"error: {r.json().get('detail', 'not found')}", err=True)
        raise typer.Exit(4)
    if r.status_code >= 400:
        typer.echo(f"error: the hub answered {r.status_code}: {r.text[:500]}", err=True)
        raise typer.Exit(3)
    return r.json()
