"""Cohorts: tag selectors (`*` or `k=v[,k=v...]`) that aliases, desired rules and rollouts target.

A cohort string is normalized (pairs sorted by key, no spaces around `=` and `,`) so that one
cohort has one key in the database. Tag names and values follow protocol/twin.py: a name is
1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit; a value is 1-128
characters. Hazard: a value here may not hold `,` (it separates pairs) nor start or end with a
space (they are trimmed), though the twin allows both; such a tag cannot be selected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import InvalidModelError

FLEET = "*"
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # protocol/twin.py's rule for tag names


def parse_cohort(text: str) -> dict[str, str]:
    """The tags a cohort string selects ({} for `*`, the fleet); InvalidModelError names a bad part."""
    if not isinstance(text, str):
        raise InvalidModelError(f"Cohort {text!r} is not a string like '*' or 'site=north,hardware=rpi4'.")
    if text.strip() == FLEET:
        return {}
    tags: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise InvalidModelError(f"Cohort {text!r} has the part {part!r}, which is not k=v.")
        if key in tags:
            raise InvalidModelError(f"Cohort {text!r} names the tag {key!r} twice.")
        tags[key] = value
    _check_tags(text, tags)
    return dict(sorted(tags.items()))


def cohort_key(tags: Mapping[str, str]) -> str:
    """The normalized cohort string for these tags: `*` when empty, else k=v pairs sorted by key."""
    if not tags:
        return FLEET
    _check_tags(dict(tags), tags)
    return ",".join(f"{k}={tags[k]}" for k in sorted(tags))


def normalize_cohort(text: str) -> str:
    return cohort_key(parse_cohort(text))


def cohort_matches(cohort: str, device_tags: Mapping[str, str]) -> bool:
    """Whether a device with these tags is in the cohort (every pair matches; `*` matches all)."""
    return all(device_tags.get(k) == v for k, v in parse_cohort(cohort).items())


def specificity(cohort: str) -> int:
    """How many tags the cohort pins: the more, the more specific (`*` is 0)."""
    return len(parse_cohort(cohort))


def _check_tags(text: object, tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        if not isinstance(key, str) or not _TAG.fullmatch(key):
            raise InvalidModelError(
                f"Cohort {text!r} has the tag name {key!r}; a tag name is 1-64 characters of "
                "A-Z a-z 0-9 . _ -, starting with a letter or digit."
            )
        if not isinstance(value, str) or not 0 < len(value) <= 128 or "," in value or value != value.strip():
            raise InvalidModelError(
                f"Cohort {text!r} has the value {value!r} for {key!r}; a value is 1-128 characters, "
                "without ',' or spaces at either end."
            )
