"""Labels (hub/labels.py): stored once per (device, time), conflicts counted, bad rows named."""

from __future__ import annotations

import pytest

from hub.labels import InvalidLabelError, LabelStore


def test_labels_are_stored_once_and_conflicts_are_counted(tmp_path):
    store = LabelStore(tmp_path)
    rows = [{"tenant": "t", "device": "d1", "ts_us": 10, "label": "normal"},
            {"tenant": "t", "device": "d2", "ts_us": 5, "label": "bearing_wear"}]
    assert store.add(rows) == {"added": 2, "repeats": 0, "conflicts": 0}
    again = store.add([rows[0], {**rows[1], "label": "normal"}])
    assert again == {"added": 0, "repeats": 1, "conflicts": 1}
    table = store.table()
    assert table.to_pylist() == [
        {"tenant": "t", "device": "d2", "ts_us": 5, "label": "bearing_wear"},  # the first label stays
        {"tenant": "t", "device": "d1", "ts_us": 10, "label": "normal"},
    ]
    assert store.table([("t", "d1")], since_us=0, until_us=11).num_rows == 1
    assert store.table(since_us=6).num_rows == 1
    assert store.stats() == {"labels": 2, "conflicts": 1}
    store.close()


@pytest.mark.parametrize("row, bad", [
    ({"tenant": "t", "device": "", "ts_us": 1, "label": "normal"}, "device ''"),
    ({"tenant": "t", "device": "d", "ts_us": "1", "label": "normal"}, "ts_us '1'"),
    ({"tenant": "t", "device": "d", "ts_us": 1, "label": None}, "label None"),
    ("nope", "'nope'"),
])
def test_a_bad_row_refuses_the_call_naming_it(tmp_path, row, bad):
    store = LabelStore(tmp_path)
    good = {"tenant": "t", "device": "d", "ts_us": 2, "label": "normal"}
    with pytest.raises(InvalidLabelError, match=f"row 1 .*{bad}" if bad != "'nope'" else "row 1 is 'nope'"):
        store.add([good, row])
    assert store.table().num_rows == 0  # all or nothing
    store.close()
