"""The drift monitor's HTTP routes (/v1/drift), mounted by hub/api/app.py when the hub has `drift`.

    GET /v1/drift                          every cohort's state: ok, suspect, drifting or cooldown
    GET /v1/drift/{cohort}                 its state and its last checks, oldest first (?limit=, default 100)
    GET /v1/drift/{cohort}/report          307 to report/index.html, so the page's relative links resolve
    GET /v1/drift/{cohort}/report/{file}   index.html, manifest.json or a PNG of the latest check's report

A report is rendered on first request per check, into <data_dir>/drift/reports/<model>/check-<id>/
(a temporary folder renamed into place, so two requests never serve half a report), and served
from there after. Unknown cohort or file: 404 with a sentence. Routes are sync, so FastAPI runs
them in its threadpool: SQLite and matplotlib stay off the event loop.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, RedirectResponse

from ..drift.monitor import DriftMonitor
from ..drift.report import render_report

REPORT_HISTORY = 200  # checks the report's timeline draws
_MEDIA = {".html": "text/html; charset=utf-8", ".png": "image/png", ".json": "application/json"}


def router(monitor: DriftMonitor) -> APIRouter:
    r = APIRouter(tags=["drift"])
    lock = threading.Lock()  # one render per check at a time

    def status_of(cohort: str) -> dict:
        for s in monitor.status():
            if s["cohort"] == cohort:
                return s
        raise HTTPException(404, f"Cohort {cohort!r} has never been checked for drift of {monitor.model}.")

    def report_dir(cohort: str) -> Path:
        status_of(cohort)
        history = monitor.history(cohort, limit=REPORT_HISTORY)
        folder = monitor.data_dir / "drift" / "reports" / monitor.model / f"check-{history[-1].id}"
        with lock:
            if not (folder / "manifest.json").is_file():
                tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
                try:
                    render_report(history, tmp, min_share=monitor.policy.min_share)
                    shutil.rmtree(folder, ignore_errors=True)
                    tmp.rename(folder)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @r.get("/v1/drift")
    def drift_status() -> list[dict]:
        return monitor.status()

    @r.get("/v1/drift/{cohort}")
    def drift_history(cohort: str, limit: int = Query(100, ge=1, le=10_000)) -> dict:
        s = status_of(cohort)
        return {**s, "checks": [c.summary() for c in monitor.history(cohort, limit=limit)]}

    @r.get("/v1/drift/{cohort}/report")
    def drift_report_page(cohort: str) -> RedirectResponse:
        status_of(cohort)
        return RedirectResponse(f"/v1/drift/{quote(cohort, safe='')}/report/index.html", status_code=307)

    @r.get("/v1/drift/{cohort}/report/{file}")
    def drift_report_file(cohort: str, file: str) -> FileResponse:
        folder = report_dir(cohort)
        listed = json.loads((folder / "manifest.json").read_text())["files"] + ["manifest.json"]
        if file not in listed:
            raise HTTPException(404, f"The drift report of cohort {cohort!r} has no file {file!r}; it has {listed!r}.")
        return FileResponse(folder / file, media_type=_MEDIA[Path(file).suffix])

    return r
