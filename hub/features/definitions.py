"""Feature views: a named, owned `FeatureSpec` over one lake source, versioned by the spec.

A view adds no arithmetic of its own: its features are `protocol.features.window_features`
of its spec, the code the agent runs before inference, so a view's `version` is the spec's
(a hash of the parameters *and* that code). Renaming or re-describing a view does not change
its version; changing a window, a channel, an aggregate or the feature code does.

Entities are fixed to (tenant, device): readings in the lake belong to one device of one tenant,
and windows are computed per device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.features import FeatureSpec
from protocol.topic import Kind

from .errors import InvalidFeatureViewError

__all__ = ["ENTITY", "FeatureView"]

ENTITY = ("tenant", "device")
# A view's name is a folder under <data_dir>/features: no separators, no leading dot.
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class FeatureView:
    """What a registry records and `materialize` computes: name, spec, source, owner, description."""

    name: str
    spec: FeatureSpec
    owner: str
    description: str = ""
    source: str = Kind.TELEMETRY.value  # the lake's `kind` column the readings come from

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidFeatureViewError(
                f"Feature view name {self.name!r} must be 1-64 characters of a-z 0-9 _ . -, "
                "starting with a letter or digit."
            )
        if not isinstance(self.spec, FeatureSpec):
            raise InvalidFeatureViewError(f"Feature view {self.name!r} has spec {self.spec!r}, not a FeatureSpec.")
        if not isinstance(self.owner, str) or not self.owner.strip():
            raise InvalidFeatureViewError(
                f"Feature view {self.name!r} has owner {self.owner!r}; it needs a non-empty owner."
            )
        if not isinstance(self.description, str):
            raise InvalidFeatureViewError(
                f"Feature view {self.name!r} has description {self.description!r}; it must be a string."
            )
        kinds = [k.value for k in Kind]
        if self.source not in kinds:
            raise InvalidFeatureViewError(
                f"Feature view {self.name!r} has source {self.source!r}; it must be one of the lake kinds {kinds!r}."
            )

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def entity(self) -> tuple[str, ...]:
        return ENTITY

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.spec.feature_names

    def source_lineage(self) -> dict[str, object]:
        """Where the view reads from, as the registry records it for each version."""
        return {"lake": "telemetry", "kind": self.source, "channels": list(self.spec.channels)}
