"""The pipeline worker task: starts due schedules, executes pending runs, survives a failing tick."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hub.pipelines import Pipeline, PipelineRunner, Schedule, Step, WorkerStats, run_worker


async def wait_for(predicate, *, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_the_worker_runs_pending_and_scheduled_runs_and_stops(tmp_path):
    calls: list[dict] = []
    step = Step("s", lambda ctx, i: calls.append(dict(ctx.params)) or {})
    runner = PipelineRunner(tmp_path, [Pipeline("p", (step,))])
    try:
        runner.add_schedule(Schedule("p", timedelta(days=1), {"from": "schedule"}))
        manual = runner.start("p", {"from": "trigger"})
        stop, stats = asyncio.Event(), WorkerStats()
        task = asyncio.create_task(run_worker(runner, stop, tick_s=0.05, stats=stats))
        await wait_for(lambda: stats.executed >= 2)
        assert sorted(c["from"] for c in calls) == ["schedule", "trigger"]
        assert runner.get(manual)["state"] == "done" and stats.scheduled == 1 and stats.errors == 0
        await wait_for(lambda: stats.ticks >= 3)
        assert len(calls) == 2  # not due again for a day
        stop.set()
        assert await asyncio.wait_for(task, timeout=5) is stats
    finally:
        runner.close()


async def test_a_failing_tick_is_counted_and_the_next_one_runs(tmp_path):
    runner = PipelineRunner(tmp_path, [Pipeline("p", (Step("s", lambda ctx, i: {}),))])
    real, failures = runner.pending, [1]

    def flaky_pending():
        if failures:
            failures.pop()
            raise OSError("disk I/O error")
        return real()

    runner.pending = flaky_pending  # type: ignore[method-assign]
    try:
        rid = runner.start("p")
        stop, stats = asyncio.Event(), WorkerStats()
        task = asyncio.create_task(run_worker(runner, stop, tick_s=0.01, stats=stats))
        await wait_for(lambda: runner.get(rid)["state"] == "done")
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        assert stats.errors == 1 and stats.last_error == "OSError: disk I/O error"
    finally:
        runner.close()
