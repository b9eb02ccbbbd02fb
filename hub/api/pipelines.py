"""Pipeline runs over HTTP (/v1/pipelines), mounted by hub/api/app.py when the hub has `pipelines`.

    GET  /v1/pipelines/runs                 runs, newest first (?pipeline=&state=&limit=), step statuses only
    GET  /v1/pipelines/runs/{id}            one run: every step's status, attempts, inputs, outputs, error
    POST /v1/pipelines/runs/{id}/approve    body {"by": "alice"}: approve the step it waits at, run the rest
    POST /v1/pipelines/runs/{id}/reject     body {"by": "alice", "reason": "..."}: the run ends rejected
    POST /v1/pipelines/runs/{id}/resume     run a failed run's failed step again, and what follows it

approve and resume execute the remaining steps before they answer (in the threadpool, never on
the event loop), so the answer is the run as they left it: done, failed again, or waiting for
the next approval. Hazard: the request lasts as long as those steps (a retraining resumed at
`train` takes seconds for the condition recipe; the CLI waits up to 10 minutes). Errors are
answered with the status their class carries (hub.pipelines.errors) and their sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..errors import HubError
from ..pipelines import RUN_STATES, PipelineRunner


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=200)


class RejectBody(ApproveBody):
    reason: str = Field("", max_length=2000)


async def _call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args, **kw)
    except HubError as exc:
        raise HTTPException(getattr(exc, "status", 500), str(exc)) from None


def router(runner: PipelineRunner) -> APIRouter:
    r = APIRouter(tags=["pipelines"])

    @r.get("/v1/pipelines/runs")
    async def list_runs(pipeline: str | None = None, state: str | None = None,
                        limit: int = Query(100, ge=1, le=10_000)) -> list[dict]:
        if state is not None and state not in RUN_STATES:
            raise HTTPException(422, f"Run state {state!r} is not one of {list(RUN_STATES)!r}.")
        return await _call(runner.list, pipeline=pipeline, state=state, limit=limit)

    @r.get("/v1/pipelines/runs/{run_id}")
    async def show(run_id: str) -> dict:
        return await _call(runner.get, run_id)

    @r.post("/v1/pipelines/runs/{run_id}/approve")
    async def approve(run_id: str, body: ApproveBody) -> dict:
        await _call(runner.approve, run_id, body.by)
        return await _call(runner.run, run_id)

    @r.post("/v1/pipelines/runs/{run_id}/reject")
    async def reject(run_id: str, body: RejectBody) -> dict:
        return await _call(runner.reject, run_id, body.by, body.reason)

    @r.post("/v1/pipelines/runs/{run_id}/resume")
    async def resume(run_id: str) -> dict:
        return await _call(runner.resume, run_id)

    return r
