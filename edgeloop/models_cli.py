"""`edgeloop models` and `edgeloop keys`: the hub's model registry and signing keys, over its HTTP API.

Exit codes (edgeloop/httpclient.py): 2 bad arguments or recipe folder, 3 hub unreachable or
failing, 4 not found, 5 the hub refused the request (conflict, checksum mismatch, unsigned).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional
from urllib.parse import quote

import typer

from .httpclient import DEFAULT_HUB, get, post, put
from .tables import print_rows

models_app = typer.Typer(help="Model versions in the hub's registry: register, sign, promote.", no_args_is_help=True)
keys_app = typer.Typer(help="The hub's model-signing keys (public halves only).", no_args_is_help=True)

HubOpt = typer.Option(DEFAULT_HUB, "--hub", help="The hub's HTTP API (or set EDGELOOP_HUB).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
RECIPE_FILE = "manifest.json"


def _path(*segments: str) -> str:
    return "/v1/models/" + "/".join(quote(s, safe="") for s in segments)


def _print_version(v: dict) -> None:
    typer.echo(f"{v['name']} {v['version']}  feature_spec {v['feature_spec']}  registered {v['registered_at']}  "
               f"signed {v['signed_at'] or 'never'}" + (f" with key {v['key_id']}" if v.get("key_id") else ""))
    meta = v.get("metadata") or {}
    for key in ("training_data", "recipe_command", "code_version"):
        if meta.get(key) is not None:
            value = meta[key] if isinstance(meta[key], str) else json.dumps(meta[key])
            typer.echo(f"  {key}: {value}")
    # Narrow enough for 80 columns; sha256, manifest digest and signature are in --json.
    rows = [{**x, "runtime": f"{x['format']}:{x['quantization']}",
             "accuracy": ((meta.get("metrics") or {}).get(x["artifact"]) or {}).get("accuracy")}
            for x in v["variants"]]
    print_rows(rows, ["artifact", "runtime", "bytes", "accuracy", "key_id"], f"{len(rows)} variant(s)")
    if v.get("aliases"):
        typer.echo("aliases: " + ", ".join(f"{a['alias']}@{a['cohort']}" for a in v["aliases"]))


@models_app.command("list")
def models_list(
    name: Optional[str] = typer.Option(None, "--name", help="Only this model's versions."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Every registered version: variants, when it was signed and by which key, aliases pointing at it."""
    rows = get(hub, "/v1/models", name=name)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        r["variants"] = ", ".join(r["variants"])
        r["key_ids"] = ", ".join(r["key_ids"])
        r["aliases"] = ", ".join(r["aliases"])
    print_rows(rows, ["name", "version", "registered_at", "signed_at", "key_ids", "aliases", "variants"],
           f"{len(rows)} version(s)")


@models_app.command("show")
def models_show(
    name: str = typer.Argument(..., help="Model name, e.g. condition."),
    version: str = typer.Argument(..., help="Registry version, e.g. 1.0.0."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """One version: provenance (training data, recipe command, code version), variants, signatures, aliases."""
    v = get(hub, _path(name, version))
    if as_json:
        typer.echo(json.dumps(v))
        return
    _print_version(v)


@models_app.command("register")
def models_register(
    recipe_dir: Path = typer.Argument(..., help="A recipe's output folder: manifest.json and the artifacts."),
    version: Optional[str] = typer.Option(None, "--version", help="Registry version (default: the recipe's)."),
    variant: list[str] = typer.Option([], "--variant", help="Register only this artifact (repeatable; default: all)."),
    training_data: Optional[str] = typer.Option(None, "--training-data", help="Where the training data is (default: the recipe's)."),
    sign: bool = typer.Option(False, "--sign/--no-sign", help="Sign the variants with the hub's active key right away."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Upload a recipe's artifacts and register them as a version; the hub checks every sha256."""
    try:
        recipe = json.loads((recipe_dir / RECIPE_FILE).read_bytes())
        name, artifacts = recipe["name"], recipe["artifacts"]
        version = version or recipe["version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        typer.echo(f"error: {recipe_dir / RECIPE_FILE} is not a readable recipe manifest ({type(exc).__name__}: {exc})", err=True)
        raise typer.Exit(2) from None
    chosen = list(dict.fromkeys(variant)) or sorted(artifacts)
    for a in chosen:
        if a not in artifacts:
            typer.echo(f"error: {a!r} is not an artifact of {recipe_dir}; it has {sorted(artifacts)}", err=True)
            raise typer.Exit(2)
        if not (recipe_dir / a).is_file():
            typer.echo(f"error: {recipe_dir / a} is missing", err=True)
            raise typer.Exit(2)
    for a in chosen:
        with open(recipe_dir / a, "rb") as f:
            put(hub, _path(name, version, "artifacts", a), f)
    body = {"recipe": recipe, "metadata": None if training_data is None else {"training_data": training_data},
            "variants": chosen if variant else None}
    result = post(hub, _path(name, version), body)
    if sign:
        result = post(hub, _path(name, version, "sign"))
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"registered {name} {version} from {recipe_dir}" + (" and signed it" if sign else ""))
    _print_version(result)


@models_app.command("sign")
def models_sign(
    name: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="Registry version."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Sign every variant of a version with the hub's active key (again after a key rotation)."""
    result = post(hub, _path(name, version, "sign"))
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"signed {name} {version} with key {result['key_id']} ({len(result['variants'])} variant(s))")


@models_app.command("promote")
def models_promote(
    name: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="A signed registry version."),
    alias: str = typer.Option("champion", "--alias", help="The alias to point at VERSION (champion, challenger, ...)."),
    cohort: str = typer.Option("*", "--cohort", help="Devices it applies to: '*' or k=v[,k=v...], e.g. site=north."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Point an alias at a version for a cohort of devices; devices pick it up at their next twin exchange."""
    result = post(hub, _path(name, "aliases", alias), {"version": version, "cohort": cohort})
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['name']} {result['alias']}@{result['cohort']} -> {result['version']}")


@keys_app.command("list")
def keys_list(hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """The signing keys' ids and public PEMs, oldest first; devices trust them by id."""
    rows = get(hub, "/v1/keys")
    if as_json:
        typer.echo(json.dumps(rows))
        return
    print_rows([{**r, "active": "yes" if r["active"] else ""} for r in rows], ["key_id", "active", "created_at"],
           f"{len(rows)} key(s)")


@keys_app.command("rotate")
def keys_rotate(hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """Make a new signing key active; the old ones stay listed. Re-sign versions devices should get."""
    result = post(hub, "/v1/keys/rotate")
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"new active key {result['key_id']}; {len(result['keys'])} key(s) listed")
    typer.echo("Devices must trust the new public key (edgeloop keys list --json) before they get models it signs.")
