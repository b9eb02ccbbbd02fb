"""Alerts: streaming anomaly detectors per device and channel, deduplicated alerts, NATS and webhook events.

    DetectorBank        RobustZ (seasonal median/MAD) and Ewma per (tenant, device, channel), and runs of
                        non-normal predictions of the devices' own models per device → Findings (detectors.py)
    AlertStore          findings → alerts in SQLite: dedup per (tenant, device, channel, kind), a rate limit
                        per device with a suppressed counter, ack/resolve, auto-resolve (store.py)
    AlertPublisher      AlertEvents → NATS `alerts.<tenant>.<device>` and an optional webhook (notify.py)

The flow: hub/streaming window values → DetectorBank.observe → AlertStore.raise_ → AlertPublisher.publish.
The HTTP routes are hub/api/alerts.py, the CLI `edgeloop alerts`. Errors are AlertError subclasses
(errors.py), each with the HTTP status the API answers with.
"""

from .detectors import (
    DAY_US, PRED_CHANNEL, DetectorBank, Ewma, EwmaConfig, Finding, FindingKind, PredictionConfig, RobustZ,
    RobustZConfig, Seasonality,
)
from .errors import AlertConfigError, AlertError, AlertTransitionError, DetectorStateError, UnknownAlertError
from .notify import SUBJECT_PREFIX, AlertPublisher, PublisherStats, WebhookConfig, event_payload, subject_for
from .store import AUTO_RESOLVER, STATES, Alert, AlertEvent, AlertStore, EventType, RateLimit

__all__ = [
    "AUTO_RESOLVER", "DAY_US", "PRED_CHANNEL", "STATES", "SUBJECT_PREFIX",
    "Alert", "AlertConfigError", "AlertError", "AlertEvent", "AlertPublisher", "AlertStore", "AlertTransitionError",
    "DetectorBank", "DetectorStateError", "EventType", "Ewma", "EwmaConfig", "Finding", "FindingKind",
    "PredictionConfig", "PublisherStats", "RateLimit", "RobustZ", "RobustZConfig", "Seasonality",
    "UnknownAlertError", "WebhookConfig", "event_payload", "subject_for",
]
