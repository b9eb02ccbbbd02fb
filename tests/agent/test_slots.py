"""Model slots (verify, copy, self-test, atomic switch, rollback, crash safety) and artifact downloads."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

import agent.models.slots as slots_mod
from agent.backoff import Backoff
from agent.config import BackoffConfig
from agent.errors import (
    ConfigError,
    CorruptDownloadError,
    DownloadError,
    InstallError,
    RollbackError,
    SelfTestFailedError,
    SlotStateError,
    TamperedModelError,
    TruncatedModelError,
    UntrustedKeyError,
)
from agent.models import Slots, download, download_all, load_trusted_keys, verify_artifact
from protocol import (
    Artifact,
    Manifest,
    ModelFormat,
    Quantization,
    RuntimeHints,
    SelfTest,
    SelfTestSample,
)
from protocol.signing import key_id, private_key_from_raw, public_key_to_pem, sign, trusted_keys

KEY = private_key_from_raw(bytes(range(32)))
STRANGER = private_key_from_raw(bytes(range(100, 132)))
TRUSTED = trusted_keys([KEY.public_key()])


def files_for(version: str) -> dict[str, bytes]:
    return {"model.onnx": f"onnx weights of {version} ".encode() * 400, "labels.txt": b"normal\nwear\nfault\n"}


def manifest_for(version: str, files: dict[str, bytes] | None = None) -> Manifest:
    files = files or files_for(version)
    return Manifest(
        name="condition",
        version=version,
        created_at=datetime(2025, 1, 2, tzinfo=timezone.utc),
        artifacts=tuple(Artifact.of(n, b) for n, b in files.items()),
        runtime=RuntimeHints(ModelFormat.ONNX, Quantization.INT8, "model.onnx"),
        feature_spec="1",
        classes=("normal", "wear", "fault"),
        self_test=SelfTest((SelfTestSample((0.5, 1.5), (0.8, 0.1, 0.1)),), tolerance=1e-3),
    )


def stage(tmp_path: Path, version: str, files: dict[str, bytes] | None = None) -> Path:
    d = tmp_path / f"staged-{version}"
    d.mkdir(exist_ok=True)
    for name, data in (files or files_for(version)).items():
        (d / name).write_bytes(data)
    return d


def passes(path: Path, manifest: Manifest) -> None:
    assert (path / manifest.runtime.model).is_file()


def install(slots: Slots, tmp_path: Path, version: str, *, key=KEY, self_test=passes):
    m = manifest_for(version)
    return slots.install(stage(tmp_path, version), m, sign(m, key), TRUSTED, self_test=self_test)


def serving(slots: Slots) -> str | None:
    """The active version, after checking its files against its manifest as a loader would."""
    info = slots.active
    if info is None:
        return None
    for a in info.manifest.artifacts:
        verify_artifact(info.artifact(a.name), a)
    return info.manifest.version


# --- installs -------------------------------------------------------------------------------


def test_install_switches_and_keeps_the_previous_model(tmp_path):
    slots = Slots(tmp_path / "models")
    assert slots.active is None and slots.previous is None
    seen = []
    info = install(slots, tmp_path, "1.0.0", self_test=lambda p, m: seen.append((p, m.version)))
    assert (info.slot, serving(slots)) == ("a", "1.0.0")
    assert seen == [(tmp_path / "models" / "a" / "artifacts", "1.0.0")]
    assert info.model_path.read_bytes() == files_for("1.0.0")["model.onnx"]
    install(slots, tmp_path, "2.0.0")
    assert (slots.active.slot, serving(slots)) == ("b", "2.0.0")
    assert (slots.previous.slot, slots.previous.manifest.version) == ("a", "1.0.0")
    assert slots.active.signature.key_id == key_id(KEY.public_key())
    assert slots.last_failure is None
    # A restarted agent sees the same state: the pointer on disk is the truth.
    assert Slots(tmp_path / "models").active == slots.active


def refused(slots: Slots, exc: type[InstallError], run, *, reason: str, version: str = "3.0.0") -> InstallError:
    """Run a failing install; the active and previous models must be exactly as before."""
    before = (serving(slots), slots.previous)
    with pytest.raises(exc) as err:
        run()
    assert (serving(slots), slots.previous) == before
    failure = Slots(slots.root).last_failure
    assert (failure.reason, failure.model, failure.version) == (reason, "condition", version)
    assert failure.message == str(err.value)
    return err.value


@pytest.fixture
def two(tmp_path) -> Slots:
    """Slots with 1.0.0 as previous and 2.0.0 active."""
    slots = Slots(tmp_path / "models")
    install(slots, tmp_path, "1.0.0")
    install(slots, tmp_path, "2.0.0")
    return slots


def test_a_tampered_artifact_is_refused_and_the_previous_keeps_serving(two, tmp_path):
    m = manifest_for("3.0.0")
    staged = stage(tmp_path, "3.0.0")
    data = bytearray((staged / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (staged / "model.onnx").write_bytes(bytes(data))
    err = refused(two, TamperedModelError, lambda: two.install(staged, m, sign(m, KEY), TRUSTED, self_test=passes),
                  reason="tampered")
    assert "model.onnx" in str(err) and m.artifact("model.onnx").sha256 in str(err)


def test_a_manifest_edited_after_signing_is_refused(two, tmp_path):
    m = manifest_for("3.0.0")
    sig = sign(m, KEY)
    evil = dataclasses.replace(m, classes=("normal", "wear", "fine"))
    refused(two, TamperedModelError, lambda: two.install(stage(tmp_path, "3.0.0"), evil, sig, TRUSTED, self_test=passes),
            reason="tampered")


def test_a_wrong_signing_key_is_refused(two, tmp_path):
    err = refused(two, UntrustedKeyError, lambda: install(two, tmp_path, "3.0.0", key=STRANGER), reason="untrusted_key")
    assert key_id(STRANGER.public_key()) in str(err)


def test_a_truncated_or_missing_artifact_is_refused(two, tmp_path):
    m = manifest_for("3.0.0")
    staged = stage(tmp_path, "3.0.0")
    full = (staged / "model.onnx").read_bytes()
    (staged / "model.onnx").write_bytes(full[: len(full) // 2])
    err = refused(two, TruncatedModelError, lambda: two.install(staged, m, sign(m, KEY), TRUSTED, self_test=passes),
                  reason="truncated")
    assert f"{len(full) // 2} bytes where the manifest says {len(full)}" in str(err)
    (staged / "model.onnx").unlink()
    err = refused(two, TruncatedModelError, lambda: two.install(staged, m, sign(m, KEY), TRUSTED, self_test=passes),
                  reason="truncated")
    assert "'model.onnx' is missing" in str(err)


def test_a_failed_self_test_is_refused(two, tmp_path):
    def wrong_outputs(path: Path, manifest: Manifest) -> None:
        raise AssertionError("sample 0 gave [0.1, 0.8, 0.1], expected [0.8, 0.1, 0.1]")

    with pytest.raises(SelfTestFailedError, match=r"AssertionError: sample 0 gave") as err:
        install(two, tmp_path, "3.0.0", self_test=wrong_outputs)
    assert serving(two) == "2.0.0"
    assert two.previous is None  # slot a (1.0.0) was overwritten by the candidate that failed
    assert two.last_failure.reason == "self_test_failed"
    assert err.value.reason == "self_test_failed"
    install(two, tmp_path, "3.0.1")  # the next good model goes where the bad one was
    assert (serving(two), two.previous.manifest.version) == ("3.0.1", "2.0.0")
    assert two.last_failure is None


def test_a_staged_file_changed_after_verification_is_refused(two, tmp_path, monkeypatch):
    real = slots_mod.verify_artifact

    def verify_then_swap(path: Path, artifact: Artifact) -> None:
        real(path, artifact)
        if artifact.name == "model.onnx":
            path.write_bytes(b"X" * artifact.size)  # swapped between the check and the copy

    monkeypatch.setattr(slots_mod, "verify_artifact", verify_then_swap)
    with pytest.raises(TamperedModelError, match="changed while being copied"):
        install(two, tmp_path, "3.0.0")
    assert serving(two) == "2.0.0"


# --- rollback -------------------------------------------------------------------------------


def test_rollback_returns_to_the_previous_model_once(two):
    info = two.rollback()
    assert (info.manifest.version, serving(two), two.previous) == ("1.0.0", "1.0.0", None)
    with pytest.raises(RollbackError, match="no previous model"):
        two.rollback()
    assert serving(Slots(two.root)) == "1.0.0"


def test_rollback_refuses_a_previous_model_whose_files_rotted(two):
    (two.previous.artifact("model.onnx")).write_bytes(b"bitrot")
    with pytest.raises(RollbackError, match="no longer verifies"):
        two.rollback()
    assert serving(two) == "2.0.0"


def test_an_unreadable_pointer_names_the_file(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / "active").write_text('{"active": "c"}')
    with pytest.raises(SlotStateError, match=re.escape(str(root / "active"))):
        Slots(root).active


# --- crash safety ---------------------------------------------------------------------------


class Killed(BaseException):
    """Stands in for SIGKILL: nothing catches it, and no cleanup path may repair state on the way out."""


@pytest.mark.parametrize("history", [(), ("1.0.0",), ("1.0.0", "2.0.0")])
def test_a_kill_at_any_durability_point_leaves_the_old_or_the_new_model(tmp_path, monkeypatch, history):
    real_fsync, real_fsync_dir = slots_mod._fsync, slots_mod._fsync_dir
    outcomes = []
    for kill_at in range(1, 100):
        root = tmp_path / f"run{kill_at}"
        slots = Slots(root)
        for v in history:
            install(slots, tmp_path, v)
        old = history[-1] if history else None
        calls = 0

        def point(*args: object, real=None) -> None:
            nonlocal calls
            calls += 1
            if calls == kill_at:
                raise Killed
            real(*args)

        monkeypatch.setattr(slots_mod, "_fsync", lambda fd: point(fd, real=real_fsync))
        monkeypatch.setattr(slots_mod, "_fsync_dir", lambda path: point(path, real=real_fsync_dir))
        try:
            install(slots, tmp_path, "9.0.0")
            finished = True
        except Killed:
            finished = False
        monkeypatch.undo()

        after = Slots(root)  # the agent after a restart
        now = serving(after)
        assert now in (old, "9.0.0"), f"killed at durability point {kill_at}"
        if now == "9.0.0" and old is not None:
            assert after.previous.manifest.version == old
        outcomes.append(now)
        install(after, tmp_path, "10.0.0")  # leftovers never block the next install
        assert serving(after) == "10.0.0"
        if finished:
            break
    else:
        pytest.fail("the install never finished")
    assert outcomes[0] == old and outcomes[-1] == "9.0.0"
    assert outcomes == sorted(outcomes, key=lambda v: v == "9.0.0")  # old until the switch, new after


# --- trusted keys ---------------------------------------------------------------------------


def test_trusted_keys_load_from_pem_files(tmp_path):
    (tmp_path / "old.pem").write_bytes(public_key_to_pem(KEY.public_key()))
    (tmp_path / "new.pem").write_bytes(public_key_to_pem(STRANGER.public_key()))
    keys = load_trusted_keys([tmp_path / "old.pem", tmp_path / "new.pem"])
    assert set(keys) == {key_id(KEY.public_key()), key_id(STRANGER.public_key())}
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="bad.pem"):
        load_trusted_keys([tmp_path / "bad.pem"])
    with pytest.raises(ConfigError, match="missing.pem"):
        load_trusted_keys([tmp_path / "missing.pem"])


# --- downloads ------------------------------------------------------------------------------


class ArtifactServer:
    """http.server on 127.0.0.1:0 serving `files`, with Range, and faults a test switches on."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.cut_after: int | None = None  # next response stops after this many body bytes
        self.ignore_range = False
        self.status: int | None = None  # answer every request with this status
        self.stall = False  # hold every request until the server stops
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.ranges.append(self.headers.get("Range"))
                if outer.stall:
                    outer._stop.wait(10)
                    return
                if outer.status is not None or self.path[1:] not in outer.files:
                    self.send_error(outer.status or 404)
                    return
                data = outer.files[self.path[1:]]
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if m and not outer.ignore_range:
                    start = int(m[1])
                    end = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = data[start:end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_after is not None:
                    body, outer.cut_after = body[: outer.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up on a stalled request; not the test's business

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll so shutdown() returns at once instead of after serve_forever's default 0.5 s.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="artifact-server"
        )

    def __enter__(self) -> "ArtifactServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as s:
        yield s


BLOB = bytes(range(256)) * 1200  # 307200 bytes


async def no_sleep(seconds: float) -> None:
    pass


async def test_a_cut_download_resumes_where_it_stopped(server, tmp_path):
    server.files["model.onnx"] = BLOB
    server.cut_after = 10_000
    a = Artifact.of("model.onnx", BLOB)
    async with httpx.AsyncClient() as client:
        path = await download(f"{server.url}/model.onnx", tmp_path / "model.onnx", a, client=client,
                              chunk_size=65_536, sleep=no_sleep)
    assert path.read_bytes() == BLOB
    assert not (tmp_path / "model.onnx.part").exists()
    assert server.ranges[:3] == ["bytes=0-65535", "bytes=10000-75535", "bytes=75536-141071"]
    assert server.ranges[-1] == f"bytes=272144-{len(BLOB) - 1}"
    assert len(server.ranges) == 6  # one cut, then whole chunks


async def test_a_part_left_by_an_earlier_run_is_resumed(server, tmp_path):
    server.files["model.onnx"] = BLOB
    (tmp_path / "model.onnx.part").write_bytes(BLOB[:123_456])
    async with httpx.AsyncClient() as client:
        await download(f"{server.url}/model.onnx", tmp_path / "model.onnx", Artifact.of("model.onnx", BLOB),
                       client=client, chunk_size=1 << 20)
    assert server.ranges == [f"bytes=123456-{len(BLOB) - 1}"]
    assert (tmp_path / "model.onnx").read_bytes() == BLOB


async def test_a_wrong_sha256_is_refused_and_the_part_deleted(server, tmp_path):
    server.files["model.onnx"] = BLOB[:-1] + b"\x00"
    async with httpx.AsyncClient() as client:
        with pytest.raises(CorruptDownloadError, match="sha256") as err:
            await download(f"{server.url}/model.onnx", tmp_path / "model.onnx", Artifact.of("model.onnx", BLOB),
                           client=client)
    assert err.value.url == f"{server.url}/model.onnx"
    assert list(tmp_path.iterdir()) == []


async def test_a_server_file_of_another_size_is_refused(server, tmp_path):
    server.files["model.onnx"] = BLOB + b"extra"
    async with httpx.AsyncClient() as client:
        with pytest.raises(CorruptDownloadError, match=f"{len(BLOB) + 5} bytes where the manifest says {len(BLOB)}"):
            await download(f"{server.url}/model.onnx", tmp_path / "model.onnx", Artifact.of("model.onnx", BLOB),
                           client=client)
    server.ignore_range = True
    async with httpx.AsyncClient() as client:
        with pytest.raises(CorruptDownloadError, match="longer than"):
            await download(f"{server.url}/model.onnx", tmp_path / "model.onnx", Artifact.of("model.onnx", BLOB),
                           client=client)
    assert list(tmp_path.iterdir()) == []


async def test_a_server_without_range_support_still_works(server, tmp_path):
    server.files["model.onnx"] = BLOB
    server.ignore_range = True
    async with httpx.AsyncClient() as client:
        await download(f"{server.url}/model.onnx", tmp_path / "model.onnx", Artifact.of("model.onnx", BLOB),
                       client=client, chunk_size=65_536)
    assert (tmp_path / "model.onnx").read_bytes() == BLOB


async def test_failures_without_progress_back_off_then_give_up(server, tmp_path):
    server.status = 503
    delays: list[float] = []

    async def record(seconds: float) -> None:
        delays.append(seconds)

    backoff = Backoff(BackoffConfig(initial=timedelta(milliseconds=200), multiplier=2.0, jitter=0.0))
    async with httpx.AsyncClient() as client:
        with pytest.raises(DownloadError, match=r"3 requests in a row brought no bytes \(last: _Retryable: HTTP 503\)"):
            await download(f"{server.url}/model.onnx", tmp_path / "model.onnx", Artifact.of("model.onnx", BLOB),
                           client=client, max_failures=3, backoff=backoff, sleep=record)
    assert delays == [0.2, 0.4]
    server.status = 404
    async with httpx.AsyncClient() as client:
        with pytest.raises(DownloadError, match="HTTP 404"):
            await download(f"{server.url}/model.onnx", tmp_path / "model.onnx", Artifact.of("model.onnx", BLOB),
                           client=client, sleep=record)


async def test_each_request_has_a_deadline(server, tmp_path):
    server.files["model.onnx"] = BLOB
    server.stall = True
    async with httpx.AsyncClient() as client:
        with pytest.raises(DownloadError, match=r"2 requests in a row brought no bytes \(last: TimeoutError\)"):
            await download(f"{server.url}/model.onnx", tmp_path / "model.onnx", Artifact.of("model.onnx", BLOB),
                           client=client, request_timeout=0.05, max_failures=2, sleep=no_sleep)


async def test_downloaded_artifacts_install(server, tmp_path):
    files = files_for("4.0.0")
    server.files.update(files)
    server.cut_after = 777
    m = manifest_for("4.0.0", files)
    async with httpx.AsyncClient() as client:
        staged = await download_all(server.url, m, tmp_path / "staging", client=client)
        asked = len(server.ranges)
        await download_all(server.url, m, tmp_path / "staging", client=client)
    assert len(server.ranges) == asked  # files already staged and verified are not fetched again
    slots = Slots(tmp_path / "models")
    slots.install(staged, m, sign(m, KEY), TRUSTED, self_test=passes)
    assert serving(slots) == "4.0.0"
