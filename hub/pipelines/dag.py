"""Pipeline definitions as value objects: steps with dependencies and retries, the DAG, schedules.

A step's contract, for whoever writes one:

    fn(ctx: StepContext, inputs: dict[dep_name, outputs]) -> dict   (JSON-able outputs)

Who calls it: `PipelineRunner.run`, once per attempt, in the caller's thread. `inputs` holds the
recorded outputs of the step's done dependencies (a skipped dependency is absent). The outputs
are stored as JSON and are all a later step, or a resume in another process, ever sees of this
one: a step that makes files writes them under `ctx.workdir` and returns their paths. Raising
fails the attempt (retried up to `retries` times, `retry_delay_s` apart); raising
`StepError` fails the step at once. A step may run again after a crash between its side effect
and the record of its outputs, so a step with side effects outside `ctx.workdir` (a registry
entry, a rollout) checks for its own earlier effect first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import PipelineDefinitionError

StepFn = Callable[["StepContext", dict[str, dict]], dict]


@dataclass(frozen=True)
class StepContext:
    """What one attempt of one step knows about its run."""

    run_id: str
    pipeline: str
    step: str
    attempt: int  # 1 for the first attempt of this step in this run, counting earlier resumes
    params: Mapping[str, Any]  # the run's parameters, as given to `start`
    workdir: Path  # <data_dir>/pipelines/<run_id>/<step>, created before the call
    approved_by: str | None = None  # for an approval step: who approved it


@dataclass(frozen=True)
class Step:
    """One node of a pipeline.

    `approval`: the run stops before this step (state awaiting_approval) until an operator
    approves or rejects it; `fn` may then be None (the step's outputs are the approval itself).
    `when`: a predicate on the run's params; False skips the step (its dependents still run).
    """

    name: str
    fn: StepFn | None = None
    _: KW_ONLY
    deps: tuple[str, ...] = ()
    retries: int = 0
    retry_delay_s: float = 0.0
    approval: bool = False
    when: Callable[[Mapping[str, Any]], bool] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise PipelineDefinitionError(f"Step name {self.name!r} must be letters, digits, '_' or '-'.")
        object.__setattr__(self, "deps", tuple(self.deps))
        if self.fn is None and not self.approval:
            raise PipelineDefinitionError(f"Step {self.name!r} has no fn; only an approval step may have none.")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise PipelineDefinitionError(f"Step {self.name!r} has retries {self.retries!r}; it must be an int >= 0.")
        delay = self.retry_delay_s
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
            raise PipelineDefinitionError(f"Step {self.name!r} has retry_delay_s {delay!r}; it must be seconds >= 0.")


@dataclass(frozen=True)
class Pipeline:
    """A named DAG of steps; `order` is a topological order, ties kept in declaration order."""

    name: str
    steps: tuple[Step, ...]
    order: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps:
            raise PipelineDefinitionError(f"Pipeline {self.name!r} has no steps.")
        names = [s.name for s in steps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PipelineDefinitionError(f"Pipeline {self.name!r} names the step(s) {dup!r} more than once.")
        for s in steps:
            unknown = [d for d in s.deps if d not in names]
            if unknown:
                raise PipelineDefinitionError(f"Step {s.name!r} of pipeline {self.name!r} depends on unknown "
                                              f"step(s) {unknown!r}; it has {names!r}.")
        order: list[str] = []
        left = list(steps)
        while left:  # Kahn's algorithm, first ready step in declaration order each time
            ready = next((s for s in left if all(d in order for d in s.deps)), None)
            if ready is None:
                raise PipelineDefinitionError(f"Pipeline {self.name!r} has a dependency cycle among "
                                              f"{[s.name for s in left]!r}.")
            order.append(ready.name)
            left.remove(ready)
        object.__setattr__(self, "order", tuple(order))

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


@dataclass(frozen=True)
class Schedule:
    """Start `pipeline` with `params` every `every`; `last_run` is what the runner persisted.

    Get one with its persisted `last_run` from `PipelineRunner.add_schedule` or `schedules()`;
    `PipelineRunner.run_due(now)` starts the due ones and records the time.
    """

    pipeline: str
    every: timedelta
    params: Mapping[str, Any] = field(default_factory=dict)
    _: KW_ONLY
    name: str = ""  # the schedule's own name (default: the pipeline's): one pipeline, several schedules
    last_run: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.every, timedelta) or self.every <= timedelta(0):
            raise PipelineDefinitionError(f"Schedule of {self.pipeline!r} has every={self.every!r}; "
                                          "it must be a positive timedelta.")
        if not self.name:
            object.__setattr__(self, "name", self.pipeline)
        if self.last_run is not None and self.last_run.tzinfo is None:
            raise PipelineDefinitionError(f"Schedule {self.name!r} has a naive last_run {self.last_run!r}; use UTC.")

    def due(self, now: datetime) -> bool:
        """Whether a run is due at `now` (tz-aware): never run yet, or `every` since the last one."""
        if now.tzinfo is None:
            raise PipelineDefinitionError(f"Schedule {self.name!r} was asked about a naive time {now!r}; use UTC.")
        return self.last_run is None or now >= self.last_run + self.every
