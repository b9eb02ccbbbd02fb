"""Errors raised by the model registry; each carries the HTTP status the API answers with.

    hub.errors.HubError
     └── RegistryError            base; `status` is the HTTP status for the API (500 unless below)
          ├── UnknownModelError   404: the name, version, artifact or key is not in the registry
          ├── InvalidModelError   422: a recipe, name, file name, cohort or alias breaks a rule
          │    ├── ArtifactRejectedError 422: a file's size or sha256 differs from the recipe's
          │    └── ArtifactTooLargeError 413: an upload is over the size limit
          ├── ModelConflictError  409: the version is registered already
          └── NotSignedError      409: the version has no signed variant yet (desired state, promote)

Messages are whole sentences that name the bad value, so the API and the CLI pass them on as is.
"""

from __future__ import annotations

from ..errors import HubError


class RegistryError(HubError):
    status = 500


class UnknownModelError(RegistryError):
    status = 404


class InvalidModelError(RegistryError):
    status = 422


class ArtifactRejectedError(InvalidModelError):
    def __init__(self, file: str, what: str, expected: object, actual: object) -> None:
        self.file, self.what, self.expected, self.actual = file, what, expected, actual
        super().__init__(f"Artifact {file!r} has {what} {actual}, but the recipe says {expected}.")


class ArtifactTooLargeError(InvalidModelError):
    status = 413


class ModelConflictError(RegistryError):
    status = 409


class NotSignedError(RegistryError):
    status = 409
