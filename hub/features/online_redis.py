"""The online store in Redis: the same contract and answers as `OnlineStore` (SQLite), shared by hubs.

    RedisOnlineStore(url)                     redis://[:password@]host:port/db or rediss://...
    update / update_from_run / get / get_many / entities / close, as in online.py

One hash per entity at `<prefix>:<view>:<version>:<tenant>:<device>` (each part percent-encoded,
so a ':' in a name cannot make two entities share a key) with the fields `vector` (little-endian
float64 in `view.feature_names` order, as in SQLite), `window_start`, `event_time`,
`available_at`, `updated_at` (µs) and `run_id` (absent when null).

Which vector wins: the same rule as SQLite, applied by a Lua script that Redis runs atomically
per entity: the stored hash is replaced only when the new `event_time` is later, or equal with a
later `available_at`. Lua numbers are doubles, exact to 2**53 µs (the year 2255).

`get_many` reads every entity in one MULTI/EXEC (one consistent view, like SQLite's transaction).
Writes go through a non-transactional pipeline: each entity's compare-and-set is atomic on its
own, which is all the rule needs, and a retried script is harmless (a replay changes nothing).

Hazards:
- Nothing is read or written until the first call: the hub starts while Redis is down, and
  every call then raises `OnlineStoreUnavailableError` naming the URL (password hidden) after
  at most `timeout` seconds per attempt (two attempts: one retry after a dropped connection).
- Redis Cluster is not supported: `get_many`'s MULTI/EXEC spans keys of many hash slots.
- Durability is Redis's own (RDB/AOF as the operator configured it); the runs rebuild it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

import pyarrow as pa
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .definitions import FeatureView
from .errors import FeatureError, InvalidFeatureViewError
from .online import newest_rows, run_table
from .service import redact_url

__all__ = ["REDIS_SCHEMES", "OnlineStoreUnavailableError", "RedisOnlineStore"]

REDIS_SCHEMES = ("redis", "rediss")
DEFAULT_PREFIX = "edgeloop:online"
_FIELDS = ("vector", "window_start", "event_time", "available_at", "updated_at", "run_id")
_WRITE_CHUNK = 1000  # entities per pipeline round trip

# KEYS[1] the entity's hash; ARGV: vector, window_start, event_time, available_at, updated_at,
# has_run_id ("1"/"0"), run_id. Returns 1 when written, 0 when the stored vector is as new or newer.
_CAS = """
local cur = redis.call('HMGET', KEYS[1], 'event_time', 'available_at')
if cur[1] then
  local et, at = tonumber(ARGV[3]), tonumber(ARGV[4])
  local cet, cat = tonumber(cur[1]), tonumber(cur[2])
  if et < cet or (et == cet and at <= cat) then
    return 0
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'vector', ARGV[1], 'window_start', ARGV[2], 'event_time', ARGV[3],
           'available_at', ARGV[4], 'updated_at', ARGV[5])
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'run_id', ARGV[7])
end
return 1
"""


class OnlineStoreUnavailableError(FeatureError, ConnectionError):
    """The online store's server cannot be reached or did not answer in time."""


def _part(value: str) -> str:
    return quote(value, safe="")


class RedisOnlineStore:
    """The latest feature vector per entity in Redis; see the module docstring."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 2.0) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in REDIS_SCHEMES:
            raise InvalidFeatureViewError(
                f"Redis online store URL {redact_url(str(url))!r} is not a redis:// or rediss:// URL."
            )
        if not prefix or not isinstance(prefix, str):
            raise InvalidFeatureViewError(f"Redis key prefix {prefix!r} must be a non-empty string.")
        if not timeout > 0:
            raise InvalidFeatureViewError(f"Redis timeout {timeout!r} must be a positive number of seconds.")
        self.url = redact_url(url)
        self.prefix = prefix
        try:
            self._redis = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                decode_responses=False,
            )
        except ValueError as exc:
            raise InvalidFeatureViewError(f"Redis online store URL {self.url!r} is invalid: {exc}") from None
        self._cas = self._redis.register_script(_CAS)
        self._unpack: dict[int, struct.Struct] = {}

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> "RedisOnlineStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> None:
        """Raise OnlineStoreUnavailableError unless Redis answers."""
        with self._reaching("ping"):
            self._redis.ping()

    def key(self, view: FeatureView, tenant: str, device: str) -> str:
        return f"{self.prefix}:{_part(view.name)}:{_part(view.version)}:{_part(tenant)}:{_part(device)}"

    @contextmanager
    def _reaching(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise OnlineStoreUnavailableError(
                f"Redis online store at {self.url} is unreachable ({what}): {exc}"
            ) from exc
        except redis.RedisError as exc:
            raise FeatureError(f"Redis online store at {self.url} failed ({what}): {exc}") from exc

    # --- writes -------------------------------------------------------------------------------
    def update(self, view: FeatureView, table: pa.Table, *, run_id: str | None = None,
               now_us: int | None = None) -> dict[str, int]:
        """Keep, per entity, the newest row of `table` if it is newer than the stored vector.

        Returns {"rows": rows given, "entities": entities in them, "updated": vectors written}.
        """
        names = view.feature_names
        latest = newest_rows(view, table)
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        pack = struct.Struct(f"<{len(names)}d").pack
        run = ("1", run_id) if run_id is not None else ("0", "")
        updated = 0
        with self._reaching("update"):
            for start in range(0, len(latest), _WRITE_CHUNK):
                pipe = self._redis.pipeline(transaction=False)
                for r in latest[start:start + _WRITE_CHUNK]:
                    self._cas(keys=[self.key(view, r[0], r[1])],
                              args=[pack(*r[5:]), int(r[2]), int(r[3]), int(r[4]), int(now_us), *run],
                              client=pipe)
                updated += sum(int(n) for n in pipe.execute())
        return {"rows": table.num_rows, "entities": len(latest), "updated": updated}

    def update_from_run(self, data_dir: Path, view: FeatureView, run_id: str, *,
                        now_us: int | None = None) -> dict[str, int]:
        """`update` from a committed run of `view` (its Parquet snapshot under data_dir/features)."""
        return self.update(view, run_table(data_dir, view, run_id), run_id=run_id, now_us=now_us)

    # --- reads --------------------------------------------------------------------------------
    def get(self, view: FeatureView, tenant: str, device: str) -> dict | None:
        """The latest vector of one entity, or None if this store has none for the view version."""
        with self._reaching("get"):
            row = self._redis.hmget(self.key(view, tenant, device), _FIELDS)
        return self._answer(view, tenant, device, row)

    def get_many(self, view: FeatureView, entities: Iterable[tuple[str, str]]) -> list[dict | None]:
        """`get` for each (tenant, device), in order, read in one MULTI/EXEC (one consistent view)."""
        keys = list(entities)
        if not keys:
            return []
        with self._reaching("get_many"):
            pipe = self._redis.pipeline(transaction=True)
            for t, d in keys:
                pipe.hmget(self.key(view, t, d), _FIELDS)
            rows = pipe.execute()
        return [self._answer(view, t, d, r) for (t, d), r in zip(keys, rows)]

    def entities(self, view: FeatureView) -> int:
        """How many entities have a vector for this view version (a SCAN: for tests and ops, not serving)."""
        pattern = f"{_glob_escape(self.prefix)}:{_part(view.name)}:{_part(view.version)}:*"
        with self._reaching("entities"):
            return sum(1 for _ in self._redis.scan_iter(match=pattern, count=1000))

    def _answer(self, view: FeatureView, tenant: str, device: str, row: list) -> dict | None:
        if row[0] is None:
            return None
        names = view.feature_names
        unpack = self._unpack.get(len(names))
        if unpack is None:
            unpack = self._unpack.setdefault(len(names), struct.Struct(f"<{len(names)}d"))
        return {
            "name": view.name, "version": view.version, "tenant": tenant, "device": device,
            "features": dict(zip(names, unpack.unpack(row[0]))),
            "window_start": int(row[1]), "event_time": int(row[2]), "available_at": int(row[3]),
            "updated_at": int(row[4]), "run_id": None if row[5] is None else row[5].decode(),
        }


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
