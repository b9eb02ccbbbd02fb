"""FeatureService: what the hub holds for the feature store and hands to its API (hub/api/features.py).

The hub builds it once, next to the model registry, and closes it on shutdown:

    self.features = FeatureService.open(cfg.data_dir, cfg.features.online)   # in Hub._open_control
    ...                                                   # and `self.features` in the close loop

The online store is chosen by `online_url` (`[features] online` in the hub's config):
None or "sqlite" → `OnlineStore` at `<data_dir>/online_features.db`, outside
`<data_dir>/features`, whose folders are view names (and "online.db" would be a valid one);
"redis://..." or "rediss://..." → `RedisOnlineStore` (online_redis.py), imported only then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .errors import InvalidFeatureViewError
from .online import OnlineBackend, OnlineStore
from .registry import FeatureRegistry

__all__ = ["ONLINE_FILENAME", "FeatureService", "redact_url"]

ONLINE_FILENAME = "online_features.db"


def redact_url(url: str) -> str:
    """`url` with any password replaced by '***', for error messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port is not None else ""
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}{port}"))
    except ValueError:
        return "<unparseable URL>"


@dataclass(frozen=True)
class FeatureService:
    registry: FeatureRegistry
    online: OnlineBackend
    data_dir: Path

    @classmethod
    def open(cls, data_dir: Path, online_url: str | None = None) -> "FeatureService":
        data_dir = Path(data_dir)
        scheme, sep, rest = online_url.partition("://") if isinstance(online_url, str) else ("", "", "")
        if not (online_url is None or online_url == "sqlite" or (sep and scheme in ("redis", "rediss") and rest)):
            raise InvalidFeatureViewError(
                f"Online store {redact_url(str(online_url))!r} is not supported;"
                ' use "sqlite" or a redis:// or rediss:// URL.'
            )
        registry = FeatureRegistry(data_dir)
        try:
            if online_url is None or online_url == "sqlite":
                online: OnlineBackend = OnlineStore(data_dir / ONLINE_FILENAME)
            else:
                from .online_redis import RedisOnlineStore

                online = RedisOnlineStore(online_url)
        except BaseException:
            registry.close()
            raise
        return cls(registry, online, data_dir)

    def close(self) -> None:
        try:
            self.online.close()
        finally:
            self.registry.close()
