"""Pipeline runs over the served API (/v1/pipelines) and `edgeloop pipelines` against it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from edgeloop.pipelines_cli import FAILED_EXIT, pipelines_app
from hub.api.pipelines import router
from hub.pipelines import Pipeline, PipelineRunner, Step
from tests.hub.test_models_api import ServedApp


class Work:
    """`build` fails while `broken`; `ship` waits for an approval."""

    def __init__(self) -> None:
        self.broken = True
        self.calls: list[str] = []

    def build(self, ctx, inputs):
        self.calls.append("build")
        if self.broken:
            raise RuntimeError("the build machine is out of disk")
        return {"artifact": "model.onnx"}

    def pipeline(self) -> Pipeline:
        return Pipeline("release", (
            Step("build", self.build),
            Step("ship", approval=True, deps=("build",)),
            Step("announce", lambda ctx, inputs: self.calls.append("announce") or {"to": "ops"}, deps=("ship",)),
        ))


@pytest.fixture
def work() -> Work:
    return Work()


@pytest.fixture
def runner(tmp_path: Path, work: Work) -> Iterator[PipelineRunner]:
    r = PipelineRunner(tmp_path, [work.pipeline()])
    yield r
    r.close()


@pytest.fixture
def url(runner: PipelineRunner) -> Iterator[str]:
    app = FastAPI()
    app.include_router(router(runner))
    with ServedApp(app) as served:
        yield served.url


def test_list_show_resume_approve_over_http(runner, work, url):
    rid = runner.start("release", {"model": "condition"}, key="k")
    runner.run(rid)
    with httpx.Client(base_url=url, timeout=30) as hub:
        runs = hub.get("/v1/pipelines/runs").json()
        assert [(r["id"], r["state"], r["steps"]) for r in runs] == [
            (rid, "failed", {"build": "failed", "ship": "pending", "announce": "pending"})]
        assert hub.get("/v1/pipelines/runs", params={"state": "done"}).json() == []
        r = hub.get("/v1/pipelines/runs", params={"state": "weird"})
        assert r.status_code == 422 and "'weird'" in r.json()["detail"]

        run = hub.get(f"/v1/pipelines/runs/{rid}").json()
        assert run["params"] == {"model": "condition"} and run["key"] == "k"
        assert run["steps"][0]["error"].startswith("RuntimeError: the build machine is out of disk")
        r = hub.get("/v1/pipelines/runs/nope-1")
        assert r.status_code == 404 and "'nope-1'" in r.json()["detail"]
        r = hub.post(f"/v1/pipelines/runs/{rid}/approve", json={"by": "alice"})
        assert r.status_code == 409 and "is failed, not awaiting approval" in r.json()["detail"]

        work.broken = False
        run = hub.post(f"/v1/pipelines/runs/{rid}/resume").json()
        assert run["state"] == "awaiting_approval" and run["steps"][0]["outputs"] == {"artifact": "model.onnx"}
        r = hub.post(f"/v1/pipelines/runs/{rid}/approve", json={"by": ""})
        assert r.status_code == 422
        run = hub.post(f"/v1/pipelines/runs/{rid}/approve", json={"by": "alice"}).json()
        assert run["state"] == "done" and run["steps"][1]["approved_by"] == "alice"
        assert run["steps"][2]["inputs"]["ship"]["approved_by"] == "alice"
        r = hub.post(f"/v1/pipelines/runs/{rid}/resume")
        assert r.status_code == 409 and "is done" in r.json()["detail"]
    assert work.calls == ["build", "build", "announce"]


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(pipelines_app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_the_cli_lists_shows_resumes_approves_and_rejects(runner, work, url):
    rid = runner.start("release")
    runner.run(rid)
    assert rid in cli("list", "--hub", url) and "build (failed)" in cli("list", "--hub", url)
    shown = cli("show", rid, "--hub", url)
    assert "failed after 1 attempt(s): the build machine is out of disk" in shown and "Traceback" not in shown
    assert json.loads(cli("show", rid, "--hub", url, "--json"))["steps"][0]["status"] == "failed"
    assert "is failed, not awaiting approval" in cli("approve", rid, "--hub", url, code=5)
    assert "no pipeline run 'nope-1'" in cli("show", "nope-1", "--hub", url, code=4)

    assert json.loads(cli("resume", rid, "--hub", url, "--json", code=FAILED_EXIT))["state"] == "failed"
    work.broken = False
    assert "awaiting_approval" in cli("resume", rid, "--hub", url)
    run = json.loads(cli("approve", rid, "--by", "carol", "--hub", url, "--json"))
    assert run["state"] == "done" and run["steps"][1]["approved_by"] == "carol"

    other = runner.start("release")
    runner.run(other)
    assert "rejected" in cli("reject", other, "--reason", "freeze", "--by", "dave", "--hub", url)
    assert runner.get(other)["error"] == "Rejected by dave: freeze"
    assert json.loads(cli("list", "--state", "rejected", "--hub", url, "--json"))[0]["id"] == other


def test_every_command_says_what_it_does():
    assert pipelines_app.info.help
    for command in pipelines_app.registered_commands:
        assert command.callback.__doc__ and len(command.callback.__doc__) > 30, command.name
        out = CliRunner().invoke(pipelines_app, [command.name, "--help"]).output
        assert "--hub" in out and "--json" in out
