"""Errors raised by pipelines; each carries the HTTP status the API answers with.

    hub.errors.HubError
     └── PipelineError              base; `status` is the HTTP status (500 unless below)
          ├── PipelineDefinitionError 422: a step list breaks a rule (unknown dep, cycle, duplicate name)
          ├── UnknownPipelineError  404: no pipeline of this name is known to the runner
          ├── UnknownRunError       404: no run has this id
          ├── RunStateError         409: the run's state does not allow this (approve a failed run)
          └── StepError             raised by a step to fail on purpose, with a sentence; never retried

A step may raise anything: the runner records `Type: message` as the step's error and retries
it (per the step's `retries`), except a StepError, which says the failure is a verdict, not an
accident (a candidate that lost to the champion loses again on a retry).
"""

from __future__ import annotations

from ..errors import HubError


class PipelineError(HubError):
    status = 500


class PipelineDefinitionError(PipelineError, ValueError):
    status = 422


class UnknownPipelineError(PipelineError, LookupError):
    status = 404

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"There is no pipeline {name!r}; the runner knows {sorted(known)!r}.")


class UnknownRunError(PipelineError, LookupError):
    status = 404

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"There is no pipeline run {run_id!r}.")


class RunStateError(PipelineError):
    status = 409


class StepError(PipelineError):
    """A step's deliberate failure: recorded with its sentence (and `outputs`, if given), never retried."""

    def __init__(self, message: str, *, outputs: dict | None = None) -> None:
        self.outputs = outputs  # what the step found before it refused: recorded as its outputs
        super().__init__(message)
