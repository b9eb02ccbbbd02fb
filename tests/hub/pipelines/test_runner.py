"""The DAG runner on a temp control.db: order, retries, failure, resume, approval, schedules, restarts."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hub.pipelines import (
    Pipeline,
    PipelineDefinitionError,
    PipelineRunner,
    RunStateError,
    Schedule,
    Step,
    StepError,
    UnknownPipelineError,
    UnknownRunError,
)

T0 = 1_750_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Flaky:
    """Step functions that count their calls and fail the first `fails[name]` of them."""

    def __init__(self, **fails: int) -> None:
        self.fails = fails
        self.calls: Counter[str] = Counter()
        self.seen: dict[str, dict] = {}

    def step(self, name: str):
        def fn(ctx, inputs):
            self.calls[name] += 1
            self.seen[name] = inputs
            if self.calls[name] <= self.fails.get(name, 0):
                raise RuntimeError(f"{name} broke (call {self.calls[name]})")
            return {"step": name, "attempt": ctx.attempt, "from": sorted(inputs), "x": ctx.params.get("x")}
        return fn


def diamond(f: Flaky, *, retries: int = 0, approval: bool = False) -> Pipeline:
    """a → (b, c) → d → e, declared out of order so the runner has to sort them."""
    return Pipeline("diamond", (
        Step("d", f.step("d"), deps=("b", "c"), retries=retries),
        Step("b", f.step("b"), deps=("a",)),
        Step("a", f.step("a")),
        Step("c", f.step("c"), deps=("a",), retries=retries, retry_delay_s=2.5),
        *((Step("ok", approval=True, deps=("d",)),) if approval else ()),
        Step("e", f.step("e"), deps=("ok",) if approval else ("d",)),
    ))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def runner_for(tmp_path: Path, pipeline: Pipeline, clock: Clock, sleeps: list | None = None) -> PipelineRunner:
    return PipelineRunner(tmp_path, [pipeline], clock=clock, sleep=(sleeps if sleeps is not None else []).append)


def statuses(run: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in run["steps"]}


def test_steps_run_in_dependency_order_with_their_deps_outputs(tmp_path, clock):
    f = Flaky()
    r = runner_for(tmp_path, diamond(f), clock)
    rid = r.start("diamond", {"x": 7})
    assert r.get(rid)["state"] == "pending" and set(statuses(r.get(rid)).values()) == {"pending"}
    run = r.run(rid)
    assert run["state"] == "done" and run["error"] is None
    assert [s["name"] for s in run["steps"]] == ["a", "b", "c", "d", "e"]
    assert set(statuses(run).values()) == {"done"} and f.calls == Counter("abcde")
    d = next(s for s in run["steps"] if s["name"] == "d")
    assert d["deps"] == ["b", "c"] and sorted(d["inputs"]) == ["b", "c"]
    assert d["inputs"]["b"] == {"step": "b", "attempt": 1, "from": ["a"], "x": 7}
    assert d["outputs"] == {"step": "d", "attempt": 1, "from": ["b", "c"], "x": 7}
    assert d["started"] and d["finished"] and d["attempts"] == 1
    # A done run is never run again.
    assert r.run(rid)["state"] == "done" and f.calls == Counter("abcde")


def test_a_step_failing_once_then_passing_is_retried_after_its_delay(tmp_path, clock):
    f, sleeps = Flaky(c=1), []
    r = runner_for(tmp_path, diamond(f, retries=1), clock, sleeps)
    run = r.run(r.start("diamond"))
    assert run["state"] == "done"
    c = next(s for s in run["steps"] if s["name"] == "c")
    assert (c["attempts"], c["error"], c["outputs"]["attempt"]) == (2, None, 2)
    assert sleeps == [2.5] and f.calls["c"] == 2


def test_a_failure_stops_the_run_and_resume_reruns_only_it_and_what_follows(tmp_path, clock):
    f = Flaky(c=2)  # more failures than retries (one): the run fails at c
    r = runner_for(tmp_path, diamond(f, retries=1), clock)
    rid = r.start("diamond")
    run = r.run(rid)
    assert run["state"] == "failed" and "Step 'c' failed after 2 attempt(s): c broke (call 2)" in run["error"]
    assert statuses(run) == {"a": "done", "b": "done", "c": "failed", "d": "pending", "e": "pending"}
    c = next(s for s in run["steps"] if s["name"] == "c")
    assert c["error"].startswith("RuntimeError: c broke (call 2)") and "Traceback" in c["error"]
    assert f.calls == Counter({"a": 1, "b": 1, "c": 2})
    assert r.run(rid)["state"] == "failed" and f.calls["c"] == 2  # run() leaves a failed run alone

    run = r.resume(rid)
    assert run["state"] == "done" and set(statuses(run).values()) == {"done"}
    assert f.calls == Counter({"a": 1, "b": 1, "c": 3, "d": 1, "e": 1})
    assert next(s for s in run["steps"] if s["name"] == "c")["attempts"] == 3  # attempts add up across resumes
    with pytest.raises(RunStateError, match="is done; only a failed run can be resumed"):
        r.resume(rid)


def test_a_step_error_is_a_verdict_not_retried_and_keeps_its_outputs(tmp_path, clock):
    def lose(ctx, inputs):
        raise StepError("The candidate lost.", outputs={"score": 0.4})

    r = PipelineRunner(tmp_path, [Pipeline("p", (Step("judge", lose, retries=3),))], clock=clock, sleep=[].append)
    run = r.run(r.start("p"))
    (judge,) = run["steps"]
    assert (run["state"], judge["status"], judge["attempts"]) == ("failed", "failed", 1)
    assert judge["error"] == "The candidate lost." and judge["outputs"] == {"score": 0.4}
    assert run["error"] == "Step 'judge' failed after 1 attempt(s): The candidate lost."


def test_outputs_that_are_not_json_fail_the_step(tmp_path, clock):
    r = PipelineRunner(tmp_path, [Pipeline("p", (Step("s", lambda ctx, i: {"x": object()}),))], clock=clock)
    run = r.run(r.start("p"))
    assert run["state"] == "failed" and "cannot be stored as JSON" in run["steps"][0]["error"]


def test_approval_pauses_the_run_and_approve_continues_it(tmp_path, clock):
    f = Flaky()
    r = runner_for(tmp_path, diamond(f, approval=True), clock)
    rid = r.start("diamond")
    run = r.run(rid)
    assert run["state"] == "awaiting_approval"
    assert statuses(run) == {"a": "done", "b": "done", "c": "done", "d": "done", "ok": "awaiting_approval",
                             "e": "pending"}
    assert r.run(rid)["state"] == "awaiting_approval" and "e" not in f.calls
    with pytest.raises(RunStateError, match="approve or reject"):
        r.resume(rid)
    with pytest.raises(RunStateError, match="needs who gives it"):
        r.approve(rid, " ")

    clock.t += 60
    assert r.approve(rid, "alice")["state"] == "pending"
    run = r.run(rid)
    assert run["state"] == "done" and f.calls["e"] == 1 and f.calls["d"] == 1
    ok = next(s for s in run["steps"] if s["name"] == "ok")
    assert (ok["status"], ok["approved_by"]) == ("done", "alice")
    assert ok["outputs"] == {"approved_by": "alice", "approved_at": "2025-06-15T15:07:40.000000+00:00"}
    assert f.seen["e"] == {"ok": ok["outputs"]}
    with pytest.raises(RunStateError, match="is done, not awaiting approval"):
        r.approve(rid, "bob")


def test_reject_ends_the_run_and_skips_what_follows(tmp_path, clock):
    f = Flaky()
    r = runner_for(tmp_path, diamond(f, approval=True), clock)
    rid = r.start("diamond")
    r.run(rid)
    run = r.reject(rid, "bob", "not during the freeze")
    assert run["state"] == "rejected" and run["error"] == "Rejected by bob: not during the freeze"
    assert statuses(run)["ok"] == "failed" and statuses(run)["e"] == "skipped"
    assert r.run(rid)["state"] == "rejected" and "e" not in f.calls
    with pytest.raises(RunStateError, match="is rejected"):
        r.resume(rid)


def test_a_step_whose_condition_is_false_is_skipped_and_its_dependents_run(tmp_path, clock):
    f = Flaky()
    p = Pipeline("p", (Step("a", f.step("a")), Step("ok", approval=True, deps=("a",), when=lambda p: p["ask"]),
                       Step("b", f.step("b"), deps=("a", "ok"))))
    r = PipelineRunner(tmp_path, [p], clock=clock)
    run = r.run(r.start("p", {"ask": False}))
    assert run["state"] == "done" and statuses(run) == {"a": "done", "ok": "skipped", "b": "done"}
    assert f.seen["b"] == {"a": {"step": "a", "attempt": 1, "from": [], "x": None}}
    assert r.run(r.start("p", {"ask": True}))["state"] == "awaiting_approval"


def test_the_same_trigger_key_is_the_same_run(tmp_path, clock):
    f = Flaky()
    r = runner_for(tmp_path, diamond(f), clock)
    first = r.start("diamond", {"x": 1}, key="drift:site=north:42")
    assert r.start("diamond", {"x": 2}, key="drift:site=north:42") == first
    r.run(first)
    assert r.start("diamond", {"x": 3}, key="drift:site=north:42") == first  # done: still the same run
    other = r.start("diamond", key="drift:site=north:43")
    assert other != first and r.start("diamond") not in (first, other)
    runs = r.list()
    assert [x["id"] for x in runs] == ["diamond-3", "diamond-2", first]  # newest first
    assert runs[-1]["steps"] == {n: "done" for n in "abcde"} and runs[-1]["params"] == {"x": 1}
    assert [x["id"] for x in r.list(state="done")] == [first]


def test_a_new_runner_on_the_same_data_dir_keeps_every_state(tmp_path, clock):
    f = Flaky(c=5)
    r = runner_for(tmp_path, diamond(f, approval=True), clock)
    failed = r.start("diamond", key="k1")
    r.run(failed)
    r.close()

    f.fails = {}
    r = runner_for(tmp_path, diamond(f, approval=True), clock)
    assert r.start("diamond", key="k1") == failed
    assert statuses(r.get(failed))["c"] == "failed"
    run = r.resume(failed)
    assert run["state"] == "awaiting_approval" and f.calls == Counter({"a": 1, "b": 1, "c": 2, "d": 1})
    r.close()

    r = runner_for(tmp_path, diamond(f, approval=True), clock)
    r.approve(failed, "alice")
    r.close()
    r = runner_for(tmp_path, diamond(f, approval=True), clock)
    assert r.run(failed)["state"] == "done" and f.calls["e"] == 1 and f.calls["a"] == 1


def test_recover_marks_a_run_a_dead_process_left_running_as_failed(tmp_path, clock):
    seen = []

    def die(ctx, inputs):
        seen.append(ctx.attempt)
        if len(seen) == 1:
            raise KeyboardInterrupt  # not an Exception: the process goes down mid-step
        return {}

    r = PipelineRunner(tmp_path, [Pipeline("p", (Step("s", die),))], clock=clock)
    rid = r.start("p")
    with pytest.raises(KeyboardInterrupt):
        r.run(rid)
    r.close()
    r = PipelineRunner(tmp_path, [Pipeline("p", (Step("s", die),))], clock=clock)
    assert r.get(rid)["state"] == "running" and r.run(rid)["state"] == "running"  # claimed: left alone
    assert r.recover() == [rid]
    run = r.get(rid)
    assert run["state"] == "failed" and run["steps"][0]["error"].startswith("Interrupted")
    assert r.resume(rid)["state"] == "done" and seen == [1, 2]


def test_schedules_are_due_every_interval_and_remember_their_last_run(tmp_path, clock):
    f = Flaky()
    r = runner_for(tmp_path, diamond(f), clock)
    nightly = r.add_schedule(Schedule("diamond", timedelta(days=1), {"x": 1}, name="nightly"))
    assert nightly.last_run is None and nightly.due(datetime(2025, 1, 1, tzinfo=timezone.utc))
    now = datetime(2025, 6, 1, 2, 0, tzinfo=timezone.utc)
    (rid,) = r.run_due(now)
    assert r.get(rid)["params"] == {"x": 1} and r.get(rid)["key"] == "schedule:nightly:after:never"
    assert r.run_due(now + timedelta(hours=23)) == []
    r.close()

    r = runner_for(tmp_path, diamond(f), clock)
    (nightly,) = r.schedules()
    assert nightly.last_run == now and nightly.every == timedelta(days=1)
    assert not nightly.due(now + timedelta(hours=23, minutes=59)) and nightly.due(now + timedelta(days=1))
    assert r.add_schedule(Schedule("diamond", timedelta(hours=12), name="nightly")).last_run == now
    (second,) = r.run_due(now + timedelta(hours=12))
    assert second != rid and r.get(second)["key"].endswith(now.isoformat(timespec="microseconds"))


def test_bad_definitions_and_unknown_names_are_refused(tmp_path, clock):
    noop = lambda ctx, inputs: {}  # noqa: E731
    with pytest.raises(PipelineDefinitionError, match="cycle"):
        Pipeline("p", (Step("a", noop, deps=("b",)), Step("b", noop, deps=("a",))))
    with pytest.raises(PipelineDefinitionError, match="unknown step"):
        Pipeline("p", (Step("a", noop, deps=("z",)),))
    with pytest.raises(PipelineDefinitionError, match="more than once"):
        Pipeline("p", (Step("a", noop), Step("a", noop)))
    with pytest.raises(PipelineDefinitionError, match="no fn"):
        Step("a")
    with pytest.raises(PipelineDefinitionError, match="retries"):
        Step("a", noop, retries=-1)
    with pytest.raises(PipelineDefinitionError, match="positive timedelta"):
        Schedule("p", timedelta(0))
    r = PipelineRunner(tmp_path, [Pipeline("p", (Step("a", noop),))], clock=clock)
    with pytest.raises(UnknownPipelineError, match="'nope'"):
        r.start("nope")
    with pytest.raises(UnknownRunError, match="'p-9'"):
        r.get("p-9")
    with pytest.raises(PipelineDefinitionError, match="JSON"):
        r.start("p", {"x": {1, 2}})
