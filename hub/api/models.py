"""The model registry's HTTP routes (/v1/models, /v1/keys), mounted by hub/api/app.py.

Registry errors become HTTP errors with the registry's sentence as `detail` and its status
(404 unknown, 409 conflict or unsigned, 413 too large, 422 bad input). Routes are sync, so
FastAPI runs them in its threadpool and SQLite and file work stay off the event loop; only the
upload is async, because it reads the request body as a stream (each chunk written in a thread).

Artifacts are served with Starlette's FileResponse, which answers `Range` with 206 (resumable
downloads, agent/models/download.py). Hazard: only names that pass the manifest's file-name
rule and belong to a registered version are served, so no path outside the registry is reachable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from ..registry import FLEET, Registry, RegistryError, normalize_cohort

T = TypeVar("T")


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: dict[str, Any]  # the recipe's manifest.json
    metadata: dict[str, Any] | None = None  # e.g. {"training_data": "..."}; overrides the recipe's defaults
    variants: list[str] | None = None  # default: every artifact of the recipe


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    cohort: str = FLEET


def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except RegistryError as exc:
        raise HTTPException(exc.status, str(exc)) from exc


def router(registry: Registry) -> APIRouter:
    r = APIRouter(tags=["models"])

    @r.get("/v1/models")
    def list_models(name: str | None = None) -> list[dict]:
        return _call(registry.list, name)

    # Declared before /{name}/{version}: "aliases" is a reserved version for this reason.
    @r.get("/v1/models/{name}/aliases")
    def list_aliases(name: str) -> list[dict]:
        return _call(registry.aliases, name)

    @r.post("/v1/models/{name}/aliases/{alias}")
    def promote(name: str, alias: str, body: AliasBody) -> dict:
        _call(registry.promote, name, body.version, alias, body.cohort)
        return {"name": name, "alias": alias, "cohort": normalize_cohort(body.cohort), "version": body.version}

    @r.get("/v1/models/{name}/{version}")
    def show(name: str, version: str) -> dict:
        return _call(registry.get, name, version)

    @r.put("/v1/models/{name}/{version}/artifacts/{file}")
    async def upload(name: str, version: str, file: str, request: Request) -> dict:
        up = await run_in_threadpool(_call, registry.open_upload, name, version, file)
        try:
            async for chunk in request.stream():
                if chunk:
                    await run_in_threadpool(_call, up.write, chunk)
            return await run_in_threadpool(up.commit)
        except BaseException:
            await run_in_threadpool(up.abort)
            raise

    @r.post("/v1/models/{name}/{version}")
    def register(name: str, version: str, body: RegisterBody) -> dict:
        files = _call(registry.staged_files, name, version)
        return _call(registry.register_files, name, version, body.recipe, files, body.metadata,
                     variants=body.variants)

    @r.post("/v1/models/{name}/{version}/sign")
    def sign(name: str, version: str) -> dict:
        return _call(registry.sign, name, version)

    @r.get("/v1/models/{name}/{version}/artifacts/{file}")
    def artifact(name: str, version: str, file: str) -> FileResponse:
        path = _call(registry.artifact_path, name, version, file)
        return FileResponse(path, media_type="application/octet-stream")

    @r.get("/v1/keys")
    def keys() -> list[dict]:
        return _call(registry.keys.public_keys)

    @r.post("/v1/keys/rotate")
    def rotate() -> dict:
        key_id = _call(registry.keys.rotate)
        return {"key_id": key_id, "keys": _call(registry.keys.public_keys)}

    return r
