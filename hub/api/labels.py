"""Labels over HTTP: POST /v1/labels (maintenance systems, operators), GET /v1/labels."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from ..labels import InvalidLabelError, LabelStore

MAX_LABELS = 100_000


class LabelRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str
    device: str
    ts_us: int
    label: str


class LabelsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[LabelRow] = Field(max_length=MAX_LABELS)
    source: str = "api"


def router(store: LabelStore) -> APIRouter:
    r = APIRouter()

    @r.post("/v1/labels")
    def add(body: LabelsBody) -> dict:
        try:
            return store.add([x.model_dump() for x in body.labels], source=body.source)
        except InvalidLabelError as exc:
            raise HTTPException(422, str(exc)) from exc

    @r.get("/v1/labels")
    def list_labels(tenant: str | None = None, device: str | None = None,
                    limit: int = Query(1000, ge=1, le=MAX_LABELS)) -> dict:
        rows = store.table().to_pylist()
        rows = [x for x in rows if (tenant is None or x["tenant"] == tenant) and (device is None or x["device"] == device)]
        return {**store.stats(), "rows": rows[-limit:]}

    return r
