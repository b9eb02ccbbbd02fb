"""Errors raised by rollouts; each carries the HTTP status the API answers with.

    hub.errors.HubError
     └── RolloutError              base; `status` is the HTTP status (500 unless below)
          ├── PlanError            422: a plan field breaks a rule; names the field and the value
          ├── UnknownRolloutError  404: no rollout has this id
          └── RolloutStateError    409: the rollout's state does not allow this (resume a complete one)

Messages are whole sentences naming the bad value, so the API and the CLI pass them on as is.
"""

from __future__ import annotations

from ..errors import HubError


class RolloutError(HubError):
    status = 500


class PlanError(RolloutError, ValueError):
    status = 422

    def __init__(self, field: str, value: object, why: str) -> None:
        self.field = field
        self.value = value
        self.why = why
        super().__init__(f"Rollout plan field {field} = {value!r}: {why}.")


class UnknownRolloutError(RolloutError, LookupError):
    status = 404

    def __init__(self, rollout_id: str) -> None:
        self.rollout_id = rollout_id
        super().__init__(f"There is no rollout {rollout_id!r}.")


class RolloutStateError(RolloutError):
    status = 409
