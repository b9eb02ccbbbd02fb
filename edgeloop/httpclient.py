"""The CLI's client for the hub's HTTP API; errors become one clear line, not a traceback."""

from __future__ import annotations

import json
import os

import httpx
import typer

DEFAULT_HUB = os.environ.get("EDGELOOP_HUB", "http://127.0.0.1:8700")


def _auth() -> dict[str, str]:
    """The operator token (EDGELOOP_TOKEN) for hubs that require one on changes (`api.token`)."""
    token = os.environ.get("EDGELOOP_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def get(hub: str, path: str, **params: object) -> object:
    """GET and return the answer's JSON; errors and exit codes as `post`."""
    return _send("GET", hub, path, timeout=30, params={k: v for k, v in params.items() if v is not None})


def get_bytes(hub: str, path: str, *, timeout: float = 60) -> bytes:
    """GET and return the raw body (report files); errors and exit codes as `post`."""
    return _send("GET", hub, path, timeout=timeout, raw=True)  # type: ignore[return-value]


def post(hub: str, path: str, body: object = None, *, timeout: float = 30) -> object:
    """POST JSON and return the answer's JSON. Exit codes: 3 hub unreachable or failing (5xx),
    4 not found (404), 5 the hub refused the request (other 4xx), with the hub's sentence."""
    return _send("POST", hub, path, timeout=timeout, json=body)


def put(hub: str, path: str, content: object, *, timeout: float = 300) -> object:
    """PUT a raw body (bytes, or an open binary file, streamed); errors as `post`."""
    return _send("PUT", hub, path, timeout=timeout, content=content,
                 headers={"content-type": "application/octet-stream"})


def _send(method: str, hub: str, path: str, *, timeout: float, raw: bool = False, **kwargs: object) -> object:
    try:
        headers = {**_auth(), **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        r = httpx.request(method, f"{hub.rstrip('/')}{path}", timeout=timeout, headers=headers, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the hub at {hub}: {exc}", err=True)
        raise typer.Exit(3) from None
    if r.status_code == 404:
        typer.echo(f"error: {_detail(r)}", err=True)
        raise typer.Exit(4)
    if 400 <= r.status_code < 500:
        typer.echo(f"error: the hub refused it ({r.status_code}): {_detail(r)}", err=True)
        raise typer.Exit(5)
    if r.status_code >= 400:
        typer.echo(f"error: the hub answered {r.status_code}: {r.text[:500]}", err=True)
        raise typer.Exit(3)
    return r.content if raw else r.json()


def _detail(r: httpx.Response) -> str:
    """FastAPI's `detail`: a sentence from the hub, or a list of validation errors."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:500] or "no detail"
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else json.dumps(detail)[:500]
