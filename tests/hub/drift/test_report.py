"""The drift report (index.html + PNGs), and the /v1/drift API and `edgeloop drift` CLI round trip."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from edgeloop.drift_cli import drift_app
from hub.api.drift import router
from hub.drift import DriftMonitor, render_report
from models.condition.data import CLASSES
from tests.hub.drift.test_monitor import NAMES, POLICY, at, reference, windows
from tests.hub.test_models_api import ServedApp

FEATURES = NAMES[:4]  # four features keep the charts few and the test fast; the first two shift
COHORT = "site=north"


def history(monitor: DriftMonitor) -> list:
    ref = reference()
    rng = np.random.default_rng(9)
    for minutes, shift in ((0, 0.0), (10, 0.5), (20, 0.5), (30, 0.5)):
        cur = windows(minutes, shift=shift, shifted=2)
        p = [0.5, 0.4, 0.1] if shift else [0.8, 0.1, 0.1]  # the worn machines are predicted as such
        predicted = np.asarray(CLASSES, object)[rng.choice(3, cur.num_rows, p=p)]
        preds = pa.table({"device": cur.column("device"), "window_start": cur.column("window_start"),
                          "prediction": pa.array(predicted.tolist())})
        monitor.check(cur, version="v1", now_us=at(minutes), reference=ref, predictions=preds,
                      cohorts={f"m{i:02d}": COHORT for i in range(12)})
    return monitor.history(COHORT)


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[DriftMonitor]:
    with DriftMonitor(tmp_path, policy=POLICY, features=FEATURES) as m:
        yield m


def test_the_report_is_a_folder_of_html_and_the_pngs_it_links(monitor, tmp_path):
    checks = history(monitor)
    assert checks[-1].state.value == "drifting" and checks[-1].trigger is not None
    index = render_report(checks, tmp_path / "report")
    page = index.read_text()
    # The headline comes first and says what happened, since when.
    assert re.search(r"<h1>Cohort site=north: 2 of 4 features drifted since 2023-11-15 00:10 UTC\.</h1>", page)
    assert page.index("<h1>") < page.index("<img")
    linked = re.findall(r'<img src="([^"]+)"', page)
    assert linked == ["hist-00.png", "hist-01.png", "statistics.png", "predictions.png", "timeline.png"]
    for name in linked:
        data = (tmp_path / "report" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000
    assert json.loads((tmp_path / "report" / "manifest.json").read_text())["files"] == ["index.html", *linked]
    assert "predicted classes drifted" in page
    assert "http" not in page  # self-contained: nothing fetched from elsewhere


def test_a_clean_check_says_so_and_lists_gated_devices(monitor, tmp_path):
    [c] = monitor.check(windows(1), version="v1", now_us=at(0), reference=reference(), bad_devices=["m03"])
    page = render_report(c, tmp_path / "clean").read_text()
    assert "<h1>Cohort *: no drift — 0 of 4 features past their thresholds at 2023-11-15 00:00 UTC.</h1>" in page
    assert "Left out as quality problems, not drift" in page and "m03" in page
    assert re.findall(r'<img src="([^"]+)"', page)[:3] == ["hist-00.png", "hist-01.png", "hist-02.png"]


@pytest.fixture
def hub_url(monitor: DriftMonitor) -> Iterator[str]:
    app = FastAPI()
    app.include_router(router(monitor))
    with ServedApp(app) as served:
        yield served.url


def test_api_and_cli_round_trip(monitor, hub_url, tmp_path):
    history(monitor)
    with httpx.Client(base_url=hub_url, timeout=60) as hub:
        [s] = hub.get("/v1/drift").json()
        assert (s["cohort"], s["state"], s["drifted_features"], s["last_trigger"]["started_at_us"]) == (
            COHORT, "drifting", 2, at(30))
        h = hub.get("/v1/drift/site%3Dnorth", params={"limit": 3}).json()
        assert [c["at_us"] for c in h["checks"]] == [at(10), at(20), at(30)] and h["checks"][2]["trigger"] == 1
        assert hub.get("/v1/drift/nowhere").status_code == 404

        r = hub.get("/v1/drift/site%3Dnorth/report", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/v1/drift/site%3Dnorth/report/index.html"
        page = hub.get("/v1/drift/site%3Dnorth/report", follow_redirects=True)
        assert page.headers["content-type"].startswith("text/html") and "2 of 4 features drifted" in page.text
        png = hub.get("/v1/drift/site%3Dnorth/report/timeline.png")
        assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
        missing = hub.get("/v1/drift/site%3Dnorth/report/secret.txt")
        assert missing.status_code == 404 and "no file 'secret.txt'" in missing.json()["detail"]

    runner = CliRunner()
    result = runner.invoke(drift_app, ["status", "--hub", hub_url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["state"] == "drifting"
    result = runner.invoke(drift_app, ["status", "--hub", hub_url])
    assert result.exit_code == 0 and COHORT in result.stdout and "drifting" in result.stdout

    out = tmp_path / "downloaded"
    result = runner.invoke(drift_app, ["report", COHORT, "--out", str(out), "--hub", hub_url])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["index.html", "hist-00.png", "hist-01.png", "statistics.png", "predictions.png",
                            "timeline.png"])
    assert "2 of 4 features drifted" in (out / "index.html").read_text()
    result = runner.invoke(drift_app, ["report", "nowhere", "--out", str(out), "--hub", hub_url])
    assert result.exit_code == 4 and "never been checked" in result.output


def test_every_command_says_what_it_does():
    assert drift_app.info.help
    for command in drift_app.registered_commands:
        assert command.callback.__doc__ and len(command.callback.__doc__) > 30, command.name
