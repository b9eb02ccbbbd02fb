"""Topics and subjects: round trips, parse errors that name the bad value, and the lane order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import InvalidIdError, InvalidTopicError, Kind, Topic, check_id, mqtt_filter, subject_filter

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True)
kinds = st.sampled_from(Kind)

# Each breaks the id rule: separators of either transport, wildcards of either, whitespace,
# empty, one character too long, a bad first character, a trailing newline ($ would allow it).
BAD_IDS = [
    "a.b", "a/b", "a+b", "a#b", "a*b", "a>b", ".", "/", "+", "#", "*", ">",
    "a b", " a", "a\tb", "", "x" * 65, "_a", "-a", "abc\n", "caf\u00e9", "\u0663",
]


@settings(derandomize=True, max_examples=200)
@given(tenant=ids, device=ids, kind=kinds)
def test_mqtt_and_subject_round_trip(tenant: str, device: str, kind: Kind) -> None:
    topic = Topic(tenant, device, kind)
    assert topic.mqtt == f"el/{tenant}/{device}/{kind.value}"
    assert topic.subject == f"el.{tenant}.{device}.{kind.value}"
    assert Topic.parse_mqtt(topic.mqtt) == topic
    assert Topic.parse_subject(topic.subject) == topic
    # The 1:1 mapping NATS relies on between its MQTT bridge and subjects.
    assert topic.mqtt.replace("/", ".") == topic.subject


def test_longest_and_shortest_ids_are_valid() -> None:
    for value in ("a", "0", "x" * 64, "A-b_9"):
        assert check_id("device", value) == value
        assert Topic.parse_mqtt(f"el/{value}/{value}/alert") == Topic(value, value, Kind.ALERT)


@pytest.mark.parametrize(
    "text",
    [
        "xx/acme/dev-1/telemetry",
        "EL/acme/dev-1/telemetry",
        "/acme/dev-1/telemetry",
        "el/acme/dev-1",
        "el/acme/dev-1/telemetry/extra",
        "el",
        "",
        "el/acme/dev-1/telemetry/",
        "el.acme.dev-1.telemetry",  # a subject is not an MQTT topic
    ],
)
def test_parse_mqtt_rejects_wrong_shape(text: str) -> None:
    with pytest.raises(InvalidTopicError) as info:
        Topic.parse_mqtt(text)
    assert info.value.topic == text
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["xx.acme.dev-1.telemetry", "el.acme.dev-1", "el.acme.dev-1.telemetry.extra", "el", "", "el/acme/dev-1/telemetry"],
)
def test_parse_subject_rejects_wrong_shape(text: str) -> None:
    with pytest.raises(InvalidTopicError) as info:
        Topic.parse_subject(text)
    assert info.value.topic == text
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("kind", ["metrics", "Telemetry", "ALERT", "", "telemetry "])
def test_parse_rejects_unknown_kind_naming_it(kind: str) -> None:
    for parse, sep in ((Topic.parse_mqtt, "/"), (Topic.parse_subject, ".")):
        with pytest.raises(InvalidTopicError) as info:
            parse(sep.join(["el", "acme", "dev-1", kind]))
        assert repr(kind) in str(info.value)
        for known in ("alert", "health", "telemetry"):
            assert known in str(info.value)


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("field", ["tenant", "device"])
def test_constructor_rejects_bad_id_naming_it(field: str, bad: str) -> None:
    kwargs = {"tenant": "acme", "device": "dev-1", "kind": Kind.TELEMETRY, field: bad}
    with pytest.raises(InvalidIdError) as info:
        Topic(**kwargs)
    assert info.value.field == field
    assert info.value.value == bad
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ValueError)  # config validators (pydantic) rely on this


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("position", [1, 2])
def test_parse_rejects_bad_id_naming_it(position: int, bad: str) -> None:
    for parse, sep in ((Topic.parse_mqtt, "/"), (Topic.parse_subject, ".")):
        parts = ["el", "acme", "dev-1", "health"]
        parts[position] = bad
        text = sep.join(parts)
        with pytest.raises(InvalidTopicError) as info:
            parse(text)
        # Either the id rule or the shape rule rejects it (a separator inside an id changes
        # the number of levels); either way the message quotes the whole topic.
        assert repr(text) in str(info.value)
        assert info.value.topic == text


@pytest.mark.parametrize("value", [None, 5, b"acme", ["acme"]])
def test_check_id_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidIdError) as info:
        check_id("tenant", value)
    assert repr(value) in str(info.value)


def test_kind_must_be_a_kind() -> None:
    with pytest.raises(InvalidTopicError, match="telemetry"):
        Topic("acme", "dev-1", "telemetry")  # type: ignore[arg-type]


def test_lanes_send_alerts_first_and_predictions_before_telemetry() -> None:
    assert Kind.ALERT.lane < Kind.HEALTH.lane < Kind.PREDICTION.lane < Kind.TELEMETRY.lane
    assert sorted(Kind, key=lambda k: k.lane) == [Kind.ALERT, Kind.HEALTH, Kind.PREDICTION, Kind.TELEMETRY]
    assert sorted(k.lane for k in Kind) == list(range(len(Kind)))


def test_kind_codes_are_the_wire_values() -> None:
    # On the wire for ever: changing one misfiles every batch already stored.
    assert {k: k.code for k in Kind} == {Kind.TELEMETRY: 0, Kind.HEALTH: 1, Kind.ALERT: 2, Kind.PREDICTION: 3}
    for kind in Kind:
        assert Kind.from_code(kind.code) is kind


def test_filters() -> None:
    assert mqtt_filter() == "el/+/+/+"
    assert mqtt_filter("acme") == "el/acme/+/+"
    assert subject_filter() == "el.>"
