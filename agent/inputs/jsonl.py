"""`jsonl` input: JSON lines from a file being appended to (resumable by byte offset) or stdin."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

from ..config import JsonlInputConfig
from .base import RecordError, Sink, group_rows, parse_record

log = logging.getLogger(__name__)


class JsonlInput:
    def __init__(self, settings: JsonlInputConfig) -> None:
        self.name = settings.name
        self._s = settings
        self.lines = 0
        self.bad_lines = 0

    async def _consume(self, sink: Sink, lines: list[bytes], checkpoint: tuple[str, str] | None) -> None:
        parsed = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                parsed.append(parse_record(json.loads(raw)))
            except (json.JSONDecodeError, UnicodeDecodeError, RecordError) as exc:
                self.bad_lines += 1
                log.warning("input %s: bad line dead-lettered: %s", self.name, exc)
                await sink.dead_letter(self.name, str(exc), raw)
        self.lines += len(lines)
        # every kind in the chunk and the new offset commit together: a crash re-reads all or nothing
        await sink.append_groups(list(group_rows(parsed).items()), checkpoint=checkpoint)

    async def run(self, sink: Sink) -> None:
        if self._s.path == "-":
            await self._run_stdin(sink)
        else:
            await self._run_file(sink)

    async def _run_stdin(self, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.buffer.readline)
            if not line:
                return
            await self._consume(sink, [line], None)

    async def _run_file(self, sink: Sink) -> None:
        s = self._s
        saved = await sink.checkpoint(self.name)
        offset = int(saved) if saved else 0
        while True:
            lines, new_offset = await asyncio.to_thread(_read_lines, s.path, offset, s.lines_per_append)
            if new_offset < offset:
                log.warning("input %s: %s shrank below offset %d; reading from the start", self.name, s.path, offset)
            if lines:
                await self._consume(sink, lines, (self.name, str(new_offset)))
                offset = new_offset
                continue
            offset = new_offset
            if not s.follow:
                return
            await asyncio.sleep(s.poll_interval.total_seconds())


def _read_lines(path: str, offset: int, limit: int) -> tuple[list[bytes], int]:
    """Complete lines from `offset`; a trailing line without a newline waits for its end."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return [], offset
    if size < offset:  # truncated or rotated in place
        offset = 0
    lines = []
    with open(path, "rb") as f:
        f.seek(offset)
        while len(lines) < limit:
            line = f.readline()
            if not line.endswith(b"\n"):
                break
            lines.append(line)
            offset += len(line)
    return lines, offset
