"""The control plane's HTTP API: device twin exchanges, desired-state rules, and rollouts.

    POST /v1/twin/{tenant}/{device}      body Reported -> Desired (the device's only call)
    GET  /v1/twin                        every twin; GET /v1/twin/{tenant}/{device} one
    GET  /v1/twin/desired                the desired-state rules; PUT sets one
    POST /v1/rollouts                    a plan -> the pending rollout; GET lists them, newest first
    GET  /v1/rollouts/{id}               state, stages, gates, events, unconverged
    POST /v1/rollouts/{id}/pause | resume | abort
    GET  /v1/control/stats               exchange and bad-report counters

Errors are answered with the status their class carries (hub.twin, hub.rollouts, hub.registry) and
their message, which names the bad value. The stores use SQLite, so every call runs in a thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from protocol import check_id
from protocol.errors import InvalidIdError, ManifestError
from protocol.twin import MAX_TWIN_BYTES, Reported

from ..errors import HubError
from ..rollouts import Rollouts, RolloutPlan
from ..twin import TwinStore

_RULE_FIELDS = ("scope", "tenant", "device", "cohort", "model", "config_version")


async def _call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args, **kw)
    except (HubError, InvalidIdError) as exc:
        raise HTTPException(getattr(exc, "status", 422), str(exc)) from None


async def _json(request: Request, what: str) -> Any:
    body = await request.body()
    if len(body) > MAX_TWIN_BYTES:
        raise HTTPException(413, f"The {what} is {len(body)} bytes, over the limit of {MAX_TWIN_BYTES}.")
    try:
        return json.loads(body) if body.strip() else None
    except ValueError as exc:
        raise HTTPException(422, f"The {what} is not valid JSON: {exc}.") from None


def _ids(tenant: str, device: str) -> None:
    try:
        check_id("tenant", tenant)
        check_id("device", device)
    except InvalidIdError as exc:
        raise HTTPException(422, str(exc)) from None


def router(twins: TwinStore, rollouts: Rollouts) -> APIRouter:
    r = APIRouter()

    @r.post("/v1/twin/{tenant}/{device}")
    async def exchange(tenant: str, device: str, request: Request) -> Response:
        body = await request.body()
        try:
            check_id("tenant", tenant)
            check_id("device", device)
            reported = Reported.from_json(body)
        except (ManifestError, InvalidIdError) as exc:
            twins.count_bad_report()  # a device that sends garbage must show up somewhere
            raise HTTPException(422, str(exc)) from None
        desired = await _call(twins.exchange, tenant, device, reported)
        return Response(json.dumps(desired.to_dict()), media_type="application/json")

    @r.get("/v1/twin")
    async def list_twins() -> list[dict]:
        return await _call(twins.list)

    @r.get("/v1/twin/desired")
    async def list_rules() -> list[dict]:
        return await _call(twins.rules)

    @r.put("/v1/twin/desired")
    async def set_rule(request: Request) -> dict:
        body = await _json(request, "desired-state rule")
        if not isinstance(body, dict):
            raise HTTPException(422, f"A desired-state rule is a JSON object with {', '.join(_RULE_FIELDS)}, "
                                     f"not {body!r}.")
        unknown = sorted(set(body) - set(_RULE_FIELDS))
        if unknown:
            raise HTTPException(422, f"A desired-state rule has no field {unknown[0]!r} "
                                     f"(known: {', '.join(_RULE_FIELDS)}).")
        model = body.get("model")
        if model is not None:
            if not isinstance(model, dict) or set(model) != {"name", "version"}:
                raise HTTPException(422, f"The rule's model must be {{name, version}} or null, not {model!r}.")
            model = (model["name"], model["version"])
        return await _call(twins.set_rule, body.get("scope"), tenant=body.get("tenant"),
                           device=body.get("device"), cohort=body.get("cohort"), model=model,
                           config_version=body.get("config_version"))

    @r.get("/v1/twin/{tenant}/{device}")
    async def show_twin(tenant: str, device: str) -> dict:
        _ids(tenant, device)
        return await _call(twins.get, tenant, device)

    @r.post("/v1/rollouts", status_code=201)
    async def start(request: Request) -> dict:
        body = await _json(request, "rollout plan")
        return await _call(lambda: rollouts.start(RolloutPlan.from_dict(body)))

    @r.get("/v1/rollouts")
    async def list_rollouts() -> list[dict]:
        return await _call(rollouts.list)

    @r.get("/v1/rollouts/{rollout_id}")
    async def status(rollout_id: str) -> dict:
        return await _call(rollouts.status, rollout_id)

    @r.post("/v1/rollouts/{rollout_id}/pause")
    async def pause(rollout_id: str) -> dict:
        return await _call(rollouts.pause, rollout_id)

    @r.post("/v1/rollouts/{rollout_id}/resume")
    async def resume(rollout_id: str) -> dict:
        return await _call(rollouts.resume, rollout_id)

    @r.post("/v1/rollouts/{rollout_id}/abort")
    async def abort(rollout_id: str, request: Request) -> dict:
        body = await _json(request, "abort request") or {}
        reason = body.get("reason") if isinstance(body, dict) else None
        if reason is not None and (not isinstance(reason, str) or not 0 < len(reason) <= 500):
            raise HTTPException(422, f"An abort reason is 1-500 characters of text, not {reason!r}.")
        return await _call(rollouts.abort, rollout_id, reason or "aborted by the operator")

    @r.get("/v1/control/stats")
    async def stats() -> dict:
        return dict(twins.stats)

    return r
