"""Inputs: JSON record parsing, the jsonl file follower's checkpoints and dead letters."""

from __future__ import annotations

import json

import pytest

from agent.asyncbuffer import AsyncBuffer
from agent.config import BufferConfig, JsonlInputConfig
from agent.inputs.base import RecordError, parse_record
from agent.inputs.jsonl import JsonlInput
from protocol import Kind


def test_parse_long_wide_and_bare_records():
    assert parse_record({"channel": "t", "value": 1.5, "ts": 2.0}) == (Kind.TELEMETRY, [("t", 2_000_000, 1.5)])
    kind, rows = parse_record({"ts_us": 5, "a": 1, "b": 2.5, "kind": "alert"})
    assert kind is Kind.ALERT and rows == [("a", 5, 1.0), ("b", 5, 2.5)]
    assert parse_record(3.0, default_channel="temp")[1][0][0::2] == ("temp", 3.0)


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"channel": "t", "value": "hot"}, "'hot'"),
        ({"ts": "yesterday", "t": 1}, "'yesterday'"),
        ({"channel": "bad channel", "value": 1}, "'bad channel'"),
        ({"kind": "gossip", "t": 1}, "'gossip'"),
        ([1, 2], "[1, 2]"),
        ({"ts": 1.0}, "no values"),
    ],
)
def test_bad_records_name_the_bad_value(record, needle):
    with pytest.raises(RecordError) as err:
        parse_record(record)
    assert needle in str(err.value)


async def test_jsonl_resumes_from_its_checkpoint_and_dead_letters_bad_lines(tmp_path):
    src = tmp_path / "sensors.jsonl"
    lines = [json.dumps({"ts_us": i, "temperature": 20 + i / 100}) for i in range(50)]
    lines.insert(10, "{not json")
    lines.insert(20, json.dumps({"ts_us": 1, "temperature": "warm"}))
    src.write_text("\n".join(lines[:30]) + "\n" + lines[30][:5])  # a half-written last line
    settings = JsonlInputConfig(type="jsonl", path=str(src), follow=False, lines_per_append=7)
    async with AsyncBuffer(BufferConfig(path=tmp_path / "b.db", synchronous="normal"), tenant="t", device="d") as buf:
        await JsonlInput(settings).run(buf)
        st = await buf.stats()
        assert st.counters["appended.telemetry"] == 28  # 30 complete lines, 2 bad
        assert st.counters["dead_letters.jsonl"] == 2
        assert {r[2].split(":")[0] for r in buf.sync.dead_letters()} >= {"Value 'warm' of channel 'temperature' is not a number."}
        # the writer finishes the file; a restarted input reads only what is new
        src.write_text("\n".join(lines) + "\n")
        await JsonlInput(settings).run(buf)
        st = await buf.stats()
        assert st.counters["appended.telemetry"] == 50
