"""Errors raised by the agent.

    AgentError
     ├── ConfigError            a config file, key or value is wrong; names all three
     ├── BufferError_           the SQLite buffer cannot do what was asked
     │    └── BufferFullError   `when_full = "block"` and no room: the caller waits for acks
     ├── UplinkError            the broker did not take a batch (not connected, timeout, refused)
     ├── InputError             an input cannot start (missing file, bad broker URL)
     ├── ModelError             a model slot operation that did not happen; the active model is untouched
     │    ├── InstallError          a model was refused; `.reason` is a slug for health, `.model`, `.version`
     │    │    ├── UntrustedKeyError       signed by a key id the device does not trust
     │    │    ├── TamperedModelError      signature or an artifact's sha256/size does not match
     │    │    ├── TruncatedModelError     an artifact is missing or shorter than its manifest says
     │    │    ├── SelfTestFailedError     the model did not load or reproduce its self-test outputs
     │    │    └── SlotWriteError          the slot could not be written (disk full, I/O error)
     │    ├── RollbackError         no verified previous model to go back to
     │    ├── SlotStateError        the slots' `active` pointer cannot be read; names the file
     │    └── DownloadError         an artifact could not be fetched; names the URL
     │         └── CorruptDownloadError    the fetched bytes are not the manifest's; the .part is deleted
     └── InferenceError         the inference backend could not do what was asked (agent/inference)
          ├── BackendUnavailableError  the runtime (onnxruntime, ai-edge-litert, tflite-runtime) does not import
          ├── ModelLoadError           the runtime refused the model file; names the file
          ├── PredictError             one predict call failed (bad input shape, runtime error); the model stays loaded
          └── SelfTestMismatchError    outputs differ from the manifest's self-test; names sample, expected, got, tolerance

Bad *data* is never an exception that stops the agent: it is counted and dead-lettered.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's own errors."""


class ConfigError(AgentError):
    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{file}: {len(problems)} problem(s):\n{lines}")


class BufferError_(AgentError):
    pass


class BufferFullError(BufferError_):
    def __init__(self, needed: int, used: int, limit: int) -> None:
        self.needed, self.used, self.limit = needed, used, limit
        super().__init__(f"The buffer is full: {used} of {limit} bytes used, {needed} more needed.")


class UplinkError(AgentError):
    pass


class InputError(AgentError):
    pass


class ModelError(AgentError):
    pass


class InstallError(ModelError):
    reason = "install_failed"

    def __init__(self, model: str, version: str, why: str) -> None:
        self.model = model
        self.version = version
        self.why = why
        super().__init__(f"Model {model} {version} was not installed: {why}")


class UntrustedKeyError(InstallError):
    reason = "untrusted_key"


class TamperedModelError(InstallError):
    reason = "tampered"


class TruncatedModelError(InstallError):
    reason = "truncated"


class SelfTestFailedError(InstallError):
    reason = "self_test_failed"


class SlotWriteError(InstallError):
    reason = "slot_write_failed"


class RollbackError(ModelError):
    pass


class SlotStateError(ModelError):
    def __init__(self, path: str, why: str) -> None:
        self.path = path
        super().__init__(f"The model slot pointer {path} is unusable: {why}.")


class DownloadError(ModelError):
    reason = "download_failed"  # the way there failed (hub away, connection cut): retried next round

    def __init__(self, url: str, why: str) -> None:
        self.url = url
        self.why = why
        super().__init__(f"Downloading {url} failed: {why}")


class CorruptDownloadError(DownloadError):
    """The bytes are wrong, not late: `reason` is "truncated" (shorter than the manifest says) or
    "tampered" (longer, or another sha256). The model is refused, not retried."""

    def __init__(self, url: str, why: str, *, reason: str = "tampered") -> None:
        self.reason = reason
        super().__init__(url, why)


class InferenceError(AgentError):
    pass


class BackendUnavailableError(InferenceError):
    def __init__(self, backend: str, why: str) -> None:
        self.backend = backend
        super().__init__(f"The {backend} inference backend is unavailable: {why}")


class ModelLoadError(InferenceError):
    def __init__(self, path: str, why: str) -> None:
        self.path = path
        super().__init__(f"The model {path} could not be loaded: {why}")


class PredictError(InferenceError):
    pass


class SelfTestMismatchError(InferenceError):
    def __init__(self, index: int, expected: list[float], got: list[float], tolerance: float) -> None:
        self.index, self.expected, self.got, self.tolerance = index, expected, got, tolerance
        if len(expected) == len(got):
            off = f"is off by {max(abs(e - g) for e, g in zip(expected, got)):.3g}, over the tolerance of {tolerance:g}"
        else:
            off = f"has {len(got)} outputs where {len(expected)} are expected (tolerance {tolerance:g})"
        super().__init__(
            f"Self-test sample {index} {off}: "
            f"expected {expected}, got {got}."
        )
