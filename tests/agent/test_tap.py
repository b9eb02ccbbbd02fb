"""InferenceTap: simulated telemetry through the tap into a real buffer, predictions out on their own lane."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from agent.asyncbuffer import AsyncBuffer
from agent.buffer import AppendResult
from agent.config import BufferConfig, SimulatedInputConfig
from agent.errors import BufferFullError
from agent.inference import InferencePipeline, InferenceSettings, InferenceTap, make_backend
from agent.inputs.simulated import SimulatedInput
from models.condition.device_manifest import device_manifest
from protocol import Kind, Readings, decode_batch
from protocol.features import FeatureSpec, window_features
from simulators import device_model

V1 = Path(__file__).resolve().parents[2] / "models" / "condition" / "v1"
RECIPE = json.loads((V1 / "manifest.json").read_text())
SPEC = FeatureSpec.from_params(RECIPE["feature_spec"]["params"])
W = SPEC.window_us
T0 = 1_700_006_400_000_000  # on a window boundary
CREATED = datetime(2025, 1, 2, tzinfo=timezone.utc)
# with the features the model was fed (feat.*, the float64 ones: the hub's bit for bit)
PREDICTION_CHANNELS = {"pred.class", *(f"pred.p.{c}" for c in RECIPE["classes"]),
                       *(f"feat.{f}" for f in SPEC.feature_names)}


def loaded(artifact: str = "model.int8.onnx"):
    m = device_manifest(RECIPE, artifact, created_at=CREATED)
    backend = make_backend(InferenceSettings(), m)
    backend.load(V1 / artifact, m)
    return backend, m


def pipeline(artifact: str = "model.int8.onnx") -> InferencePipeline:
    p = InferencePipeline()
    p.set_champion(*loaded(artifact), SPEC)
    return p


def sim(ticks: int, *, wear: float = 2.0) -> SimulatedInputConfig:
    return SimulatedInputConfig(type="simulated", name="sim", realtime=False, max_ticks=ticks, start_us=T0,
                                wear_rate=wear)


async def stored(buffer: AsyncBuffer) -> dict[Kind, Readings]:
    await buffer.seal(force=True)
    batches = await buffer.next_batches(10_000)
    out: dict[Kind, list[Readings]] = {}
    for b in batches:
        d = decode_batch(b.payload)
        assert d.header.kind is b.kind
        out.setdefault(b.kind, []).append(d.readings)
    return {k: Readings.concat(v) for k, v in out.items()}


async def test_simulated_minutes_through_the_tap_give_one_prediction_per_closed_window(tmp_path: Path) -> None:
    minutes = 7
    settings = BufferConfig(path=tmp_path / "buffer.db", synchronous="normal")
    async with AsyncBuffer(settings, tenant="acme", device="dev-1") as buffer:
        p = pipeline()
        tap = InferenceTap(buffer, p)
        runner = asyncio.create_task(tap.run(), name="inference")
        await SimulatedInput(sim(minutes * 60 + 30), device="dev-1").run(tap)  # non-realtime: as fast as it goes
        await tap.wait_idle()  # every window the input closed is predicted and stored
        runner.cancel()
        by_kind = await stored(buffer)
        predictions, telemetry = by_kind[Kind.PREDICTION], by_kind[Kind.TELEMETRY]
        # the tap forwarded every reading: what the model saw is exactly what the hub will get
        model = device_model("dev-1", start_us=T0, period_us=1_000_000, wear_rate=2.0)
        assert telemetry.equals(model.frame(0, minutes * 60 + 30))
        _, hub_rows, ends = window_features(telemetry, SPEC)
        assert len(ends) == minutes + 1  # the last, half-full window is still open ...
        assert set(predictions.channels) == PREDICTION_CHANNELS
        starts = np.unique(predictions.ts_us)
        np.testing.assert_array_equal(starts, ends[:-1] - W)  # ... so one prediction per closed window
        assert len(predictions) == len(starts) * len(PREDICTION_CHANNELS)
        # the predictions are the model's on the hub's features of those windows, which they carry
        expected = pipeline().predict(ends[:-1] - W, hub_rows[:-1])
        assert predictions.equals(expected)
        await tap.flush()  # shutdown: the open window closes and is predicted
        assert np.unique((await stored(buffer))[Kind.PREDICTION].ts_us).tolist() == (ends - W).tolist()
        stats = await buffer.stats()
        assert stats.counters["appended.prediction"] == (minutes + 1) * len(PREDICTION_CHANNELS)
        h = p.health()
        assert (h["inference.windows"], h["inference.errors"], h["inference.dropped_windows"]) == (minutes + 1, 0, 0)
        assert tap.predicted_windows == minutes + 1


class Recorder:
    """A sink that keeps what it was given, and can refuse."""

    def __init__(self) -> None:
        self.appended: list[tuple[Kind, Readings]] = []
        self.refuse = False
        self.checkpoints: dict[str, str] = {}
        self.dead: list[tuple[str, str, bytes | None]] = []

    async def append(self, readings: Readings, *, kind: Kind = Kind.TELEMETRY,
                     checkpoint: tuple[str, str] | None = None) -> AppendResult:
        return await self.append_groups([(kind, readings)], checkpoint=checkpoint)

    async def append_groups(self, groups: list[tuple[Kind, Readings]], *,
                            checkpoint: tuple[str, str] | None = None) -> AppendResult:
        if self.refuse:
            raise BufferFullError(1, 2, 3)
        self.appended.extend(groups)
        if checkpoint is not None:
            self.checkpoints[checkpoint[0]] = checkpoint[1]
        return AppendResult(sum(len(r) for _, r in groups))

    async def checkpoint(self, source: str) -> str | None:
        return self.checkpoints.get(source)

    async def dead_letter(self, source: str, reason: str, data: bytes | None) -> None:
        self.dead.append((source, reason, data))

    def kinds(self, kind: Kind) -> list[Readings]:
        return [r for k, r in self.appended if k is kind]


def minutes_of(n: int, first_minute: int = 0) -> Readings:
    model = device_model("tap-1", start_us=T0, period_us=1_000_000, wear_rate=0.0)
    return model.frame(first_minute * 60, n * 60)


async def test_the_sink_comes_first_and_a_refused_append_feeds_nothing() -> None:
    sink = Recorder()
    tap = InferenceTap(sink, pipeline())
    sink.refuse = True
    with pytest.raises(BufferFullError):
        await tap.append(minutes_of(3), checkpoint=("sim", "180"))
    assert tap.queued_windows == 0 and tap.windower is None
    sink.refuse = False
    await tap.append(minutes_of(3), checkpoint=("sim", "180"))  # the input's retry
    assert tap.queued_windows == 2 and await tap.checkpoint("sim") == "180"
    await tap.dead_letter("sim", "bad", b"x")
    assert sink.dead == [("sim", "bad", b"x")]
    await tap.flush()
    (predictions,) = sink.kinds(Kind.PREDICTION)
    assert np.unique(predictions.ts_us).tolist() == [T0, T0 + W, T0 + 2 * W]


async def test_only_telemetry_is_fed_and_only_while_a_model_serves() -> None:
    sink = Recorder()
    p = InferencePipeline()
    tap = InferenceTap(sink, p)
    await tap.append(minutes_of(2))  # no model: forwarded, not fed
    assert tap.windower is None and len(sink.appended) == 1
    p.set_champion(*loaded(), SPEC)
    await tap.append_groups([(Kind.ALERT, minutes_of(2, 2)), (Kind.HEALTH, minutes_of(2, 2))])
    assert tap.windower.open_windows == 0
    await tap.append_groups([(Kind.TELEMETRY, minutes_of(2, 4))])
    await tap.flush()
    (predictions,) = sink.kinds(Kind.PREDICTION)
    assert np.unique(predictions.ts_us).tolist() == [T0 + 4 * W, T0 + 5 * W]


async def test_a_new_spec_starts_the_windows_over() -> None:
    sink = Recorder()
    p = pipeline()
    tap = InferenceTap(sink, p)
    await tap.append(minutes_of(1, 0))
    await tap.append(minutes_of(1, 1).take(np.arange(40)))  # window 1 open with 10 ticks
    assert tap.windower.open_windows == 1
    p.set_champion(None, None, None)
    await tap.append(minutes_of(1, 1).take(np.arange(40, 240)))  # unseen by any model
    p.set_champion(*loaded(), SPEC)
    await tap.append(minutes_of(2, 2))
    await tap.flush()
    starts = np.unique(np.concatenate([r.ts_us for r in sink.kinds(Kind.PREDICTION)])).tolist()
    assert starts == [T0, T0 + 2 * W, T0 + 3 * W]  # window 1 was only half seen: never predicted


async def test_a_full_queue_drops_the_oldest_windows_and_counts_them() -> None:
    sink = Recorder()
    p = pipeline()
    tap = InferenceTap(sink, p, max_queued_windows=4, max_batch_windows=3)
    await tap.append(minutes_of(10))  # 9 windows close; no run() task to take them
    assert tap.queued_windows == 4 and p.health()["inference.dropped_windows"] == 5
    await tap.flush()  # closes window 9: one more in a full queue, so window 5 goes too
    batches = sink.kinds(Kind.PREDICTION)
    assert [len(np.unique(r.ts_us)) for r in batches] == [3, 1]  # at most max_batch_windows per predict
    starts = np.unique(np.concatenate([r.ts_us for r in batches]))
    np.testing.assert_array_equal(starts, T0 + W * np.arange(6, 10))  # the newest windows
    h = p.health()
    assert (h["inference.calls"], h["inference.windows"], h["inference.dropped_windows"]) == (2, 4, 6)


async def test_late_windows_reach_the_pipelines_health() -> None:
    sink = Recorder()
    p = pipeline()
    tap = InferenceTap(sink, p)
    r = minutes_of(3)
    await tap.append(r.take(np.flatnonzero(r.ts_us >= T0 + 30_000_000)))  # 30 s in: window 0 is partial
    await tap.append(r.take(np.flatnonzero(r.ts_us < T0 + 30_000_000)))  # a slow input's older readings
    assert tap.windower.partial_windows == 1 and p.health()["inference.late_windows"] == 1


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="max_queued_windows is 0"):
        InferenceTap(Recorder(), InferencePipeline(), max_queued_windows=0)
