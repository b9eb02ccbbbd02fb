"""The feature registry: views by name and version, their history and lineage, in control.db.

    register(view)         idempotent per (name, version); a new version appends to history
    get(name, version)     the latest version unless one is named
    list()                 the latest version of every view
    history(name)          every version, oldest first
    record_run(...)        a materialization: the lake files and partitions it read, row counts
    runs(name, version)    materializations of one version, oldest first
    lineage(name, version) the source (lake kind, channels) and every run's inputs

Tables are created on first use, like every other part of control.db (hub/control_db.py).
The spec is stored as `FeatureSpec.params()`; a row whose params no longer hash to its version
(the feature code changed since) is still listed, under the version it was registered with.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hub import control_db
from protocol.features import FeatureSpec

from .definitions import FeatureView
from .errors import FeatureConflictError, UnknownFeatureError

__all__ = ["FeatureRegistry", "RegisteredView", "RunFile", "RunRecord"]

_TABLES = """
CREATE TABLE IF NOT EXISTS feature_views (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    params TEXT NOT NULL,
    source TEXT NOT NULL,
    owner TEXT NOT NULL,
    description TEXT NOT NULL,
    registered_us INTEGER NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS feature_runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    materialized_us INTEGER NOT NULL,
    since_us INTEGER,
    until_us INTEGER,
    rows_read INTEGER NOT NULL,
    rows_written INTEGER NOT NULL,
    path TEXT NOT NULL,
    lake_version INTEGER,
    FOREIGN KEY (name, version) REFERENCES feature_views (name, version)
);
CREATE TABLE IF NOT EXISTS feature_run_files (
    run_id TEXT NOT NULL REFERENCES feature_runs (run_id),
    file TEXT NOT NULL,
    partition TEXT NOT NULL,
    rows INTEGER NOT NULL,
    PRIMARY KEY (run_id, file)
);
"""


@dataclass(frozen=True)
class RegisteredView:
    view: FeatureView
    version: str  # as registered; equals view.version unless the feature code changed since
    registered_us: int


@dataclass(frozen=True)
class RunFile:
    file: str  # path of a lake Parquet file, as DuckDB read it
    partition: str  # its hive partition, "date=YYYY-MM-DD"
    rows: int  # rows of it the run read (after the channel and time filters)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    version: str
    seq: int  # order of runs: a later run has a larger seq
    materialized_us: int
    since_us: int | None
    until_us: int | None
    rows_read: int
    rows_written: int
    path: Path  # the run's folder of Parquet files
    files: tuple[RunFile, ...]
    lake_version: int | None = None  # the Delta version of the lake it read (None: before the Delta lake)


class FeatureRegistry:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.db = control_db.connect(self.data_dir / control_db.FILENAME)
        self.db.executescript(_TABLES)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(feature_runs)")}
        if "lake_version" not in columns:  # a registry from before the Delta lake: its runs have none
            self.db.execute("ALTER TABLE feature_runs ADD COLUMN lake_version INTEGER")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "FeatureRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- views --------------------------------------------------------------------------------
    def register(self, view: FeatureView, *, now_us: int | None = None) -> RegisteredView:
        """Record `view`; registering the same name, version and metadata again changes nothing."""
        params = json.dumps(view.spec.params(), sort_keys=True)
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        self.db.execute("BEGIN IMMEDIATE")  # read-then-insert must not race another hub process
        try:
            row = self.db.execute(
                "SELECT * FROM feature_views WHERE name = ? AND version = ?", (view.name, view.version)
            ).fetchone()
            if row is None:
                self.db.execute(
                    "INSERT INTO feature_views (name, version, params, source, owner, description, registered_us)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (view.name, view.version, params, view.source, view.owner, view.description, now_us),
                )
                self.db.execute("COMMIT")
                return RegisteredView(view, view.version, now_us)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        known = _view(row)
        if (row["owner"], row["description"], row["source"]) != (view.owner, view.description, view.source):
            # Same version, other metadata: silently keeping either would lose someone's edit.
            raise FeatureConflictError(
                f"Feature view {view.name!r} version {view.version} is registered with owner {row['owner']!r},"
                f" source {row['source']!r} and description {row['description']!r}; it cannot be registered"
                f" again with owner {view.owner!r}, source {view.source!r} and description {view.description!r}."
            )
        return known

    def get(self, name: str, version: str | None = None) -> RegisteredView:
        if version is None:
            row = self.db.execute(
                "SELECT * FROM feature_views WHERE name = ? ORDER BY seq DESC LIMIT 1", (name,)
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT * FROM feature_views WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        if row is None:
            what = f"Feature view {name!r}" + ("" if version is None else f" version {version!r}")
            raise UnknownFeatureError(f"{what} is not registered.")
        return _view(row)

    def list(self) -> list[RegisteredView]:
        """The latest version of every view, by name."""
        rows = self.db.execute(
            "SELECT * FROM feature_views WHERE seq IN (SELECT max(seq) FROM feature_views GROUP BY name)"
            " ORDER BY name"
        ).fetchall()
        return [_view(r) for r in rows]

    def history(self, name: str) -> list[RegisteredView]:
        rows = self.db.execute("SELECT * FROM feature_views WHERE name = ? ORDER BY seq", (name,)).fetchall()
        if not rows:
            raise UnknownFeatureError(f"Feature view {name!r} is not registered.")
        return [_view(r) for r in rows]

    # --- materializations ---------------------------------------------------------------------
    def record_run(
        self,
        view: FeatureView,
        *,
        run_id: str,
        materialized_us: int,
        since_us: int | None,
        until_us: int | None,
        rows_read: int,
        rows_written: int,
        path: Path,
        files: Sequence[RunFile],
        lake_version: int | None = None,
    ) -> RunRecord:
        """Commit a run whose files are already in place: from here on, retrieval sees it."""
        self.get(view.name, view.version)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "INSERT INTO feature_runs (run_id, name, version, materialized_us, since_us, until_us,"
                " rows_read, rows_written, path, lake_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, view.name, view.version, materialized_us, since_us, until_us, rows_read, rows_written,
                 str(path), lake_version),
            )
            self.db.executemany(
                "INSERT INTO feature_run_files VALUES (?, ?, ?, ?)",
                [(run_id, f.file, f.partition, f.rows) for f in files],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return self.run(run_id)

    def run(self, run_id: str) -> RunRecord:
        row = self.db.execute("SELECT * FROM feature_runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnknownFeatureError(f"Materialization run {run_id!r} is not recorded.")
        return self._run(row)

    def runs(self, name: str, version: str) -> list[RunRecord]:
        rows = self.db.execute(
            "SELECT * FROM feature_runs WHERE name = ? AND version = ? ORDER BY seq", (name, version)
        ).fetchall()
        return [self._run(r) for r in rows]

    def lineage(self, name: str, version: str | None = None) -> dict[str, object]:
        """The source a version reads and, per run, the lake files, partitions and rows it read."""
        registered = self.get(name, version)
        return {
            "name": name,
            "version": registered.version,
            "source": registered.view.source_lineage(),
            "runs": [
                {
                    "run_id": r.run_id,
                    "materialized_us": r.materialized_us,
                    "since_us": r.since_us,
                    "until_us": r.until_us,
                    "rows_read": r.rows_read,
                    "rows_written": r.rows_written,
                    "lake_version": r.lake_version,
                    "partitions": sorted({f.partition for f in r.files}),
                    "files": [{"file": f.file, "partition": f.partition, "rows": f.rows} for f in r.files],
                }
                for r in self.runs(name, registered.version)
            ],
        }

    def _run(self, row) -> RunRecord:
        files = self.db.execute(
            "SELECT file, partition, rows FROM feature_run_files WHERE run_id = ? ORDER BY file", (row["run_id"],)
        ).fetchall()
        return RunRecord(
            run_id=row["run_id"], name=row["name"], version=row["version"], seq=row["seq"],
            materialized_us=row["materialized_us"], since_us=row["since_us"], until_us=row["until_us"],
            rows_read=row["rows_read"], rows_written=row["rows_written"], path=Path(row["path"]),
            files=tuple(RunFile(f["file"], f["partition"], f["rows"]) for f in files),
            lake_version=row["lake_version"],
        )


def _view(row) -> RegisteredView:
    spec = FeatureSpec.from_params(json.loads(row["params"]))
    view = FeatureView(row["name"], spec, row["owner"], row["description"], row["source"])
    return RegisteredView(view, row["version"], row["registered_us"])
