"""Bytes on the wire per reading: the columnar zstd envelope beside the same readings as JSON lines.

Run: python bench/bench_wire_size.py [--batches 40] [--batch 5000] [--period 1s]

Readings come from the simulator's four-channel device (temperature, humidity, vibration_rms,
power_w; values rounded to each sensor's resolution), in batches of `--batch` readings. Each
batch is sent once: as one envelope (encode_batch, its default zstd level), or as JSON lines,
one object per reading: {"tenant", "device", "channel", "ts" (seconds, µs precision), "value"}.
The compressed JSON figures compress each batch's lines on their own (gzip level 6, zstd at the
envelope's level), as a sender that ships a batch per message would.
"""

from __future__ import annotations

import argparse
import gzip
import json

import zstandard as zstd

from figures import emit, note

from protocol import Kind, decode_batch, encode_batch, parse_duration
from simulators.signals import device_model

GOAL = 0.1
START_US = 1_750_000_000_000_000
ZSTD_LEVEL = 3  # encode_batch's default level


def json_lines(readings, *, tenant: str, device: str) -> bytes:
    names = readings.channels
    return "".join(
        json.dumps({"tenant": tenant, "device": device, "channel": names[c], "ts": t / 1e6, "value": v},
                   separators=(",", ":")) + "\n"
        for c, t, v in zip(readings.channel.tolist(), readings.ts_us.tolist(), readings.value.tolist())
    ).encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch", type=int, default=5000, help="readings per batch")
    p.add_argument("--period", default="1s", help="sampling period of the simulated device")
    args = p.parse_args()
    period_us = int(parse_duration(args.period).total_seconds() * 1e6)
    model = device_model("dev-1", start_us=START_US, period_us=period_us)
    ticks = args.batch // len(model.channels)
    sizes = {"envelope": 0, "json": 0, "gzip6": 0, "zstd3": 0}
    n = 0
    cctx = zstd.ZstdCompressor(level=ZSTD_LEVEL)
    for i in range(args.batches):
        r = model.frame(i * ticks, ticks)
        env = encode_batch(r, tenant="bench", device="dev-1", kind=Kind.TELEMETRY, epoch=1, seq=i + 1)
        if not decode_batch(env).readings.equals(r):
            raise RuntimeError(f"Batch {i} does not round-trip through the envelope.")
        lines = json_lines(r, tenant="bench", device="dev-1")
        sizes["envelope"] += len(env)
        sizes["json"] += len(lines)
        sizes["gzip6"] += len(gzip.compress(lines, compresslevel=6, mtime=0))
        sizes["zstd3"] += len(cctx.compress(lines))
        n += len(r)
    note(f"{n} readings in {args.batches} batches: " + ", ".join(f"{k} {v} B" for k, v in sizes.items()))
    per = {k: v / n for k, v in sizes.items()}
    shape = {"readings": n, "batches": args.batches, "readings_per_batch": ticks * len(model.channels),
             "channels": len(model.channels), "period": args.period}
    emit("wire_bytes_per_reading[envelope]", per["envelope"], "bytes/reading",
         reference="json_lines_bytes_per_reading", reference_value=per["json"],
         goal=f"<= {GOAL} x reference", meets_goal=per["envelope"] <= GOAL * per["json"], **shape)
    for name, label in (("gzip6", "gzip level 6"), ("zstd3", f"zstd level {ZSTD_LEVEL}")):
        emit(f"wire_bytes_per_reading[envelope]_vs_json_{name}", per["envelope"], "bytes/reading",
             reference=f"json_lines_{name}_bytes_per_reading", reference_value=per[name],
             goal="< 1 x reference (columnar beats whole-batch compressed JSON)",
             meets_goal=per["envelope"] < per[name], compression=label,
             reference_vs_json_lines=per[name] / per["json"], **shape)


if __name__ == "__main__":
    main()
