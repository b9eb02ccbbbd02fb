"""parse_duration: the forms TOML files may use, and errors that name the bad value."""

from __future__ import annotations

from datetime import timedelta

import pytest

from protocol import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5),
        ("2m", 120),
        ("1h", 3600),
        ("1d", 86400),
        ("10us", 10e-6),
        ("1h30m", 5400),
        ("1m30s500ms", 90.5),
        ("1.5s", 1.5),
        ("0.25h", 900),
        ("0s", 0),
        (" 5s ", 5),
        ("1h 30m", 5400),
    ],
)
def test_accepted_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(("value", "seconds"), [(5, 5), (0, 0), (0.5, 0.5), (2.25, 2.25)])
def test_plain_numbers_are_seconds(value: float, seconds: float) -> None:
    assert parse_duration(value) == timedelta(seconds=seconds)


def test_timedelta_passes_through() -> None:
    assert parse_duration(timedelta(minutes=3)) == timedelta(minutes=3)


@pytest.mark.parametrize(
    "value",
    [
        "", "   ", "5", "s", "ms", "5x", "5 seconds", "-5s", "+5s", "1.s", ".5s", "1h30",
        "5S", "1,5s", "5s!", "abc", "1e3s",
        None, True, False, -1, -0.5, [], {"s": 5}, b"5s",
    ],
)
def test_rejected_values_are_named(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    "value",
    [float("inf"), float("nan"), 10**20, 10**400, "99999999999d", "9" * 400 + "s"],
    ids=["inf", "nan", "1e20", "1e400", "99999999999d", "9e400s"],
)
def test_values_timedelta_cannot_hold_are_rejected_as_values(value: object) -> None:
    # TOML has `inf` and `nan` floats, and config validators turn only ValueError into a
    # message naming the key: an OverflowError here is a traceback at `config check`.
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert repr(value) in str(info.value)
