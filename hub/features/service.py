"""FeatureService: what the hub holds for the feature store and hands to its API (hub/api/features.py).

The hub builds it once, next to the model registry, and closes it on shutdown:

    self.features = FeatureService.open(cfg.data_dir)     # in Hub._open_control
    ...                                                   # and `self.features` in the close loop

`open` puts the online store at `<data_dir>/online_features.db`, outside `<data_dir>/features`,
whose folders are view names (and "online.db" would be a valid one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .online import OnlineBackend, OnlineStore
from .registry import FeatureRegistry

__all__ = ["ONLINE_FILENAME", "FeatureService"]

ONLINE_FILENAME = "online_features.db"


@dataclass(frozen=True)
class FeatureService:
    registry: FeatureRegistry
    online: OnlineBackend
    data_dir: Path

    @classmethod
    def open(cls, data_dir: Path) -> "FeatureService":
        data_dir = Path(data_dir)
        registry = FeatureRegistry(data_dir)
        try:
            online = OnlineStore(data_dir / ONLINE_FILENAME)
        except BaseException:
            registry.close()
            raise
        return cls(registry, online, data_dir)

    def close(self) -> None:
        try:
            self.online.close()
        finally:
            self.registry.close()
