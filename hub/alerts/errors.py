"""Alert errors; each carries the HTTP status the API answers with.

    hub.errors.HubError
     └── AlertError                  base; `status` is the HTTP status (500 unless below)
          ├── AlertConfigError       422: a detector, store or publisher setting, or an argument (a state
          │                          filter, an operator's name), out of range; names it and the value
          │                          (also a ValueError)
          ├── DetectorStateError     422: a saved DetectorBank state that cannot be loaded (another format,
          │                          a missing or mistyped field) (also a ValueError)
          ├── UnknownAlertError      404: no alert has this id (also a LookupError)
          └── AlertTransitionError   409: the alert's state does not allow this (ack a resolved alert)

Messages are whole sentences naming the bad value, so the API and the CLI pass them on as is.
"""

from __future__ import annotations

from ..errors import HubError

__all__ = ["AlertConfigError", "AlertError", "AlertTransitionError", "DetectorStateError", "UnknownAlertError"]


class AlertError(HubError):
    """Base of every error the alerts package raises."""

    status = 500


class AlertConfigError(AlertError, ValueError):
    status = 422

    def __init__(self, field: str, value: object, why: str) -> None:
        self.field = field
        self.value = value
        self.why = why
        super().__init__(f"Alert {field} = {value!r} is refused: {why}.")


class DetectorStateError(AlertError, ValueError):
    status = 422


class UnknownAlertError(AlertError, LookupError):
    status = 404

    def __init__(self, alert_id: object) -> None:
        self.alert_id = alert_id
        super().__init__(f"There is no alert {alert_id!r}.")


class AlertTransitionError(AlertError):
    status = 409

    def __init__(self, alert_id: int, state: str, action: str, why: str) -> None:
        self.alert_id = alert_id
        self.state = state
        self.action = action
        super().__init__(f"Alert {alert_id} is {state}, so it cannot be {action}: {why}.")
