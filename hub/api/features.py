"""The feature store's HTTP routes (/v1/features), mounted by hub/api/app.py when the hub has `features`.

    GET  /v1/features                                  the latest version of every view, with its run count
    GET  /v1/features/{name}                           the latest version, its history and its lineage
    POST /v1/features/{name}/materialize               a run of the latest version, then the online store
    GET  /v1/features/{name}/online/{tenant}/{device}  the device's latest vector
    POST /v1/features/{name}/point-in-time             labels → features as of each label's ts
    GET  /v1/features/{name}/consistency               device-sent features against the latest run's
                                                       (?tenant=&device=&since_us=&until_us=&rtol=&atol=)
    POST /v1/datasets                                  labels + a view → a versioned training dataset
    GET  /v1/datasets                                  every dataset version (?name= for one dataset)
    GET  /v1/datasets/{name}/{version}                 one dataset version with its lineage

Feature errors become HTTP errors with the store's sentence as `detail`: 404 unknown view, run
or entity, 409 conflict, 422 bad input. Routes are sync, so FastAPI runs them in its
threadpool and SQLite, DuckDB and Parquet work stay off the event loop. The registry's one
connection is shared, so its calls hold a lock (`control_db.connect`: callers serialize).
Non-finite floats become null (JSON has no NaN).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pyarrow as pa
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from ..features import (
    FeatureConflictError,
    FeatureError,
    FeatureRegistry,
    OnlineBackend,
    RegisteredView,
    InvalidFeatureViewError,
    UnknownFeatureError,
    build_dataset,
    get_dataset,
    list_datasets,
    materialize,
    point_in_time,
)
from ..features.consistency import check as consistency_check

T = TypeVar("T")
MAX_LABELS = 100_000  # per request; larger label sets belong in a batch job, not a JSON body


class Features(Protocol):
    """What the router needs; hub.features.FeatureService is one."""

    registry: FeatureRegistry
    online: OnlineBackend
    data_dir: Any


class MaterializeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since_us: int | None = None
    until_us: int | None = None
    lake_version: int | None = None  # read the lake as of this Delta version (default: latest)


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str
    device: str
    ts_us: int


class PointInTimeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[Label] = Field(max_length=MAX_LABELS)
    semantics: str = "event"
    as_of_run: str | None = None
    as_of_lake_version: int | None = None


class DatasetLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str
    device: str
    ts_us: int
    label: str | int | float | bool | None


class DatasetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    view: str
    view_version: str | None = None  # the view's latest registered version when None
    labels: list[DatasetLabel] = Field(max_length=MAX_LABELS)
    semantics: str = "arrival"
    as_of_run: str | None = None
    label_source: str = ""


def _dataset_labels(labels: list[DatasetLabel]) -> pa.Table:
    try:
        label = pa.array([x.label for x in labels])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidFeatureViewError(f"Dataset labels must all be of one type: {exc}") from exc
    return pa.table({
        "tenant": pa.array([x.tenant for x in labels], pa.string()),
        "device": pa.array([x.device for x in labels], pa.string()),
        "ts_us": pa.array([x.ts_us for x in labels], pa.int64()),
        "label": label,
    })


def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except UnknownFeatureError as exc:
        raise HTTPException(404, str(exc)) from exc
    except FeatureConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    except FeatureError as exc:  # InvalidFeatureViewError and any other
        raise HTTPException(422, str(exc)) from exc


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _summary(v: RegisteredView) -> dict:
    return {
        "name": v.view.name, "version": v.version, "owner": v.view.owner, "description": v.view.description,
        "source": v.view.source, "window_us": v.view.spec.window_us, "features": list(v.view.feature_names),
        "registered_us": v.registered_us,
    }


def router(features: Features) -> APIRouter:
    r = APIRouter(tags=["features"])
    lock = threading.Lock()

    def registry(method: str, *args: Any) -> Any:
        with lock:
            return _call(getattr(features.registry, method), *args)

    @r.get("/v1/features")
    def list_views() -> list[dict]:
        out = []
        for v in registry("list"):
            runs = registry("runs", v.view.name, v.version)
            out.append({**_summary(v), "runs": len(runs), "last_run": runs[-1].run_id if runs else None})
        return out

    @r.get("/v1/features/{name}")
    def show(name: str) -> dict:
        latest = registry("get", name)
        return {
            **_summary(latest),
            "history": [_summary(v) for v in registry("history", name)],
            "lineage": registry("lineage", name, latest.version),
        }

    @r.post("/v1/features/{name}/materialize")
    def run_materialize(name: str, body: MaterializeBody | None = None) -> dict:
        body = body or MaterializeBody()
        view = registry("get", name).view
        summary = _call(materialize, features.data_dir, view, since_us=body.since_us, until_us=body.until_us,
                        lake_version=body.lake_version)
        online = _call(features.online.update_from_run, features.data_dir, view, summary["run_id"])
        return {**summary, "online": online}

    @r.get("/v1/features/{name}/online/{tenant}/{device}")
    def online_get(name: str, tenant: str, device: str) -> dict:
        view = registry("get", name).view
        got = features.online.get(view, tenant, device)
        if got is None:
            raise HTTPException(404, f"Feature view {name!r} has no online vector for device {tenant}/{device}.")
        got["features"] = {k: _finite(x) for k, x in got["features"].items()}
        return got

    @r.post("/v1/features/{name}/point-in-time")
    def retrieve(name: str, body: PointInTimeBody) -> dict:
        view = registry("get", name).view
        labels = [(x.tenant, x.device, x.ts_us) for x in body.labels]
        table = _call(point_in_time, features.data_dir, view, labels, semantics=body.semantics,
                      as_of_run=body.as_of_run, as_of_lake_version=body.as_of_lake_version)
        rows = [{k: _finite(x) for k, x in row.items()} for row in table.to_pylist()]
        return {"name": name, "version": view.version, "semantics": body.semantics, "as_of_run": body.as_of_run,
                "as_of_lake_version": body.as_of_lake_version, "rows": rows}

    @r.post("/v1/datasets")
    def dataset_build(body: DatasetBody) -> dict:
        view = registry("get", body.view, body.view_version).view
        labels = _call(_dataset_labels, body.labels)
        # build_dataset opens its own registry connection: a build is long, the shared one stays free.
        return _call(build_dataset, features.data_dir, view, labels, name=body.name, semantics=body.semantics,
                     as_of_run=body.as_of_run, label_source=body.label_source)

    @r.get("/v1/datasets")
    def dataset_list(name: str | None = None) -> list[dict]:
        return _call(list_datasets, features.data_dir, name)

    @r.get("/v1/datasets/{name}/{version}")
    def dataset_show(name: str, version: str) -> dict:
        return _call(get_dataset, features.data_dir, name, version)

    @r.get("/v1/features/{name}/consistency")
    def consistency(
        name: str, tenant: str | None = None, device: str | None = None, since_us: int | None = None,
        until_us: int | None = None, rtol: float = 0.0, atol: float = 0.0,
    ) -> dict:
        """hub.features.consistency.check on the latest version; it only reads (materialize first)."""
        view = registry("get", name).view
        return _call(consistency_check, features.data_dir, view, tenant=tenant, device=device,
                     since_us=since_us, until_us=until_us, rtol=rtol, atol=atol)

    return r
