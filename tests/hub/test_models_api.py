"""The registry's HTTP API served for real (uvicorn on a free port): upload, register, sign, Range, resume."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from agent.models import download
from hub.api.models import router
from hub.registry import Registry
from protocol import Artifact, Manifest, signing
from tests.servers import wait_until

RECIPE_DIR = Path(__file__).resolve().parents[2] / "models" / "condition" / "v1"
RECIPE = json.loads((RECIPE_DIR / "manifest.json").read_text())


class ServedApp:
    """An ASGI app under uvicorn on 127.0.0.1:0 in a thread; `url` once it listens."""

    def __init__(self, app: FastAPI) -> None:
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                     lifespan="off", ws="none"))
        self._thread = threading.Thread(target=self._server.run, name="served-app")
        self.url = ""

    def __enter__(self) -> "ServedApp":
        self._thread.start()
        wait_until(lambda: self._server.started or not self._thread.is_alive(), timeout=10, what="uvicorn to listen")
        if not self._server.started:
            raise RuntimeError("uvicorn stopped before it listened")
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def registry_app(registry: Registry) -> FastAPI:
    app = FastAPI()
    app.include_router(router(registry))
    return app


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(tmp_path / "hub")
    yield r
    r.close()


@pytest.fixture
def hub(registry: Registry) -> Iterator[httpx.Client]:
    with ServedApp(registry_app(registry)) as served, httpx.Client(base_url=served.url, timeout=10) as client:
        yield client


def upload(hub: httpx.Client, version: str, files: dict[str, bytes] | None = None) -> None:
    for name in RECIPE["artifacts"]:
        data = (files or {}).get(name, (RECIPE_DIR / name).read_bytes())
        r = hub.put(f"/v1/models/condition/{version}/artifacts/{name}", content=data)
        assert r.status_code == 200, r.text
        assert r.json()["bytes"] == len(data)


def register(hub: httpx.Client, version: str, **extra: object) -> httpx.Response:
    return hub.post(f"/v1/models/condition/{version}", json={"recipe": RECIPE, **extra})


def test_upload_register_sign_promote(hub, registry):
    upload(hub, "1.0.0")
    r = register(hub, "1.0.0", metadata={"training_data": "lake://sim"})
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["training_data"] == "lake://sim"
    assert not (registry.staging / "condition" / "1.0.0").exists()  # staging is cleared once registered
    r = hub.post("/v1/models/condition/1.0.0/sign")
    assert r.status_code == 200, r.text
    trust = signing.trusted_keys([signing.public_key_from_pem(k["pem"].encode()) for k in hub.get("/v1/keys").json()])
    for v in r.json()["variants"]:
        signing.verify(Manifest.from_dict(v["manifest"]), signing.Signature.from_json(json.dumps(v["signature"])), trust)
    r = hub.post("/v1/models/condition/aliases/champion", json={"version": "1.0.0", "cohort": "site=north"})
    assert r.json() == {"name": "condition", "alias": "champion", "cohort": "site=north", "version": "1.0.0"}
    assert [a["version"] for a in hub.get("/v1/models/condition/aliases").json()] == ["1.0.0"]
    listed = hub.get("/v1/models").json()
    assert [(m["name"], m["version"], m["aliases"]) for m in listed] == [("condition", "1.0.0", ["champion@site=north"])]
    assert hub.get("/v1/models/condition/1.0.0").json()["key_id"] == registry.keys.active_id()


def test_refusals_name_the_problem(hub):
    bad = bytearray((RECIPE_DIR / "model.int8.onnx").read_bytes())
    bad[100] ^= 0xFF
    upload(hub, "1.0.0", {"model.int8.onnx": bytes(bad)})
    r = register(hub, "1.0.0")
    assert r.status_code == 422 and "'model.int8.onnx' has sha256" in r.json()["detail"]
    upload(hub, "1.0.0")
    assert register(hub, "1.0.0").status_code == 200
    r = register(hub, "1.0.0")
    assert r.status_code == 409 and "registered already" in r.json()["detail"]
    r = hub.put("/v1/models/condition/1.0.0/artifacts/model.int8.onnx", content=b"x")
    assert r.status_code == 409  # a registered version's files never change
    r = hub.post("/v1/models/condition/9.9.9/sign")
    assert r.status_code == 404 and "'9.9.9'" in r.json()["detail"]
    r = hub.post("/v1/models/condition/aliases/champion", json={"version": "1.0.0"})
    assert r.status_code == 409 and "not signed" in r.json()["detail"]
    hub.post("/v1/models/condition/1.0.0/sign")
    r = hub.post("/v1/models/condition/aliases/champion", json={"version": "1.0.0", "cohort": "site"})
    assert r.status_code == 422 and "'site'" in r.json()["detail"]
    r = register(hub, "2.0.0", variants=["model.int8.onnx"])
    assert r.status_code == 422 and "'model.int8.onnx' of condition 2.0.0 was not supplied" in r.json()["detail"]
    assert hub.get("/v1/models/nope/1.0.0").status_code == 404
    assert hub.post("/v1/models/condition/3.0.0", json={"recipe": RECIPE, "extra": 1}).status_code == 422


def test_only_registered_artifacts_are_served(hub, registry):
    upload(hub, "1.0.0")
    assert register(hub, "1.0.0", variants=["model.int8.onnx"]).status_code == 200
    base = "/v1/models/condition/1.0.0/artifacts"
    assert hub.get(f"{base}/model.int8.onnx").content == (RECIPE_DIR / "model.int8.onnx").read_bytes()
    r = hub.get(f"{base}/model.fp32.onnx")
    assert r.status_code == 404 and "has no artifact 'model.fp32.onnx'" in r.json()["detail"]
    (registry.data_dir / "secret").write_text("no")
    for path in (f"{base}/..%2F..%2F..%2Fsecret", f"{base}/.hidden", "/v1/models/condition/..%2F..%2Fkeys/artifacts/active"):
        r = hub.get(path)
        assert r.status_code in (404, 422), (path, r.status_code)
        assert b"no" != r.content


def test_a_range_request_gets_206_and_those_bytes(hub):
    upload(hub, "1.0.0")
    register(hub, "1.0.0")
    data = (RECIPE_DIR / "model.int8.onnx").read_bytes()
    r = hub.get("/v1/models/condition/1.0.0/artifacts/model.int8.onnx", headers={"Range": "bytes=100-1099"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    assert r.content == data[100:1100]


async def test_the_agent_download_resumes_against_the_hub(hub, tmp_path):
    upload(hub, "1.0.0")
    register(hub, "1.0.0")
    data = (RECIPE_DIR / "model.int8.onnx").read_bytes()
    dest = tmp_path / "model.int8.onnx"
    dest.with_name(dest.name + ".part").write_bytes(data[:1000])  # left by an earlier, cut download
    ranges: list[str] = []

    async def record(request: httpx.Request) -> None:
        ranges.append(request.headers["range"])

    url = str(hub.base_url.join("/v1/models/condition/1.0.0/artifacts/model.int8.onnx"))
    async with httpx.AsyncClient(event_hooks={"request": [record]}) as client:
        path = await download(url, dest, Artifact.of("model.int8.onnx", data), client=client, chunk_size=1024)
    assert path.read_bytes() == data
    assert ranges == [f"bytes={s}-{min(s + 1024, len(data)) - 1}" for s in range(1000, len(data), 1024)]


def test_keys_rotate(hub):
    first = hub.get("/v1/keys").json()
    r = hub.post("/v1/keys/rotate").json()
    assert [k["key_id"] for k in r["keys"]] == [first[0]["key_id"], r["key_id"]]
    assert [k["active"] for k in hub.get("/v1/keys").json()] == [False, True]
