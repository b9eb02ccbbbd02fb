"""The control plane's SQLite file (`<data_dir>/control.db`): registry, twins, rollouts.

One file so that a rollout transition and the desired state it implies can commit together.
Each part creates and owns its tables. WAL, so the API's readers never block the controller;
`busy_timeout` so two hub processes sharing a data dir wait for each other instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

FILENAME = "control.db"


def connect(path: Path) -> sqlite3.Connection:
    """A connection for one thread (`check_same_thread=False`: callers serialize their own use)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA busy_timeout=5000")
    return con


@contextmanager
def immediate(con: sqlite3.Connection, lock: threading.Lock | None = None) -> Iterator[sqlite3.Connection]:
    """One write transaction on `con` (autocommit mode): BEGIN IMMEDIATE, COMMIT when the block
    ends, ROLLBACK when it raises; under `lock` when the connection is shared by threads."""
    with lock if lock is not None else nullcontext():
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
