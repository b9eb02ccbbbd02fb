"""Lake upkeep (hub/storage/maintenance.py): compaction when due, vacuum, one process at a time."""

from __future__ import annotations

import os
from datetime import timedelta

from hub.storage.lake import Lake
from hub.storage.maintenance import maintain
from hub.storage.store import try_lock
from tests.hub.test_lake import T0, keys, rows


def test_maintain_compacts_only_when_due_and_keeps_every_row(tmp_path):
    lake = Lake(tmp_path)
    for v in range(5):
        lake.append(rows("d1", T0 + v * 10**9, 100, seq=v))
    before = keys(lake.read())
    idle = maintain(lake, compact_min_files=6, vacuum_retention=timedelta(hours=1))
    assert (idle["compacted"], idle["files_before"], idle["files_after"]) == (False, 5, 5)
    done = maintain(lake, compact_min_files=5, vacuum_retention=timedelta(hours=1))
    assert (done["compacted"], done["files_before"], done["files_after"]) == (True, 5, 1)
    assert done["vacuumed"] == 0  # the replaced files are younger than the retention: time travel still works
    assert keys(lake.read()) == before
    assert len(lake.files(lake.version() - 1)) == 5


def test_one_process_holds_the_maintenance_lock(tmp_path):
    first = try_lock(tmp_path / "maintenance.lock")
    assert first is not None
    try:
        assert try_lock(tmp_path / "maintenance.lock") is None  # another holder is refused, not blocked
    finally:
        os.close(first)
    again = try_lock(tmp_path / "maintenance.lock")
    assert again is not None
    os.close(again)
