"""Training datasets over the served API (/v1/datasets) and `edgeloop features dataset-build|datasets`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from edgeloop.cli import app
from hub.features import FeatureService, load_dataset, materialize
from tests.hub.features.test_features_api import crafted_lake, features_app
from tests.hub.features.test_offline_store import HOUR, S, T0, VIEW
from tests.hub.test_models_api import ServedApp

LABELS = [
    {"tenant": "acme", "device": "m1", "ts_us": T0 + 90 * S, "label": 0},  # the spike is after it: no leak
    {"tenant": "acme", "device": "m1", "ts_us": T0 + HOUR, "label": 1},  # window 2 not yet arrived
    {"tenant": "acme", "device": "m1", "ts_us": T0 - 1, "label": 0},  # before the first window: kept, null
    {"tenant": "acme", "device": "ghost", "ts_us": T0 + HOUR, "label": 1},  # unknown device: kept, null
]


@pytest.fixture
def served(service: FeatureService) -> Iterator[str]:
    with ServedApp(features_app(service)) as s:
        yield s.url


@pytest.fixture
def materialized(service: FeatureService, tmp_path: Path) -> str:
    crafted_lake(tmp_path)
    service.registry.register(VIEW, now_us=T0)
    return materialize(tmp_path, VIEW)["run_id"]


def test_build_list_show_round_trip(served, materialized, tmp_path):
    body = {"name": "wear", "view": VIEW.name, "labels": LABELS, "label_source": "maintenance:2023-11"}
    with httpx.Client(base_url=served, timeout=30) as hub:
        r = hub.post("/v1/datasets", json=body)
        assert r.status_code == 200, r.text
        built = r.json()
        assert (built["view"], built["view_version"], built["run_ids"]) == (VIEW.name, VIEW.version, [materialized])
        assert (built["semantics"], built["label_rows"], built["null_feature_rows"]) == ("arrival", 4, 2)
        assert built["lineage"]["label_source"] == "maintenance:2023-11"
        assert hub.post("/v1/datasets", json=body).json() == built  # idempotent

        listed = hub.get("/v1/datasets").json()
        assert [(d["name"], d["version"]) for d in listed] == [("wear", built["version"])]
        assert hub.get("/v1/datasets", params={"name": "other"}).json() == []
        assert hub.get(f"/v1/datasets/wear/{built['version']}").json() == built

        r = hub.get("/v1/datasets/wear/0000000000000000")
        assert r.status_code == 404 and "'wear'" in r.json()["detail"]
        r = hub.post("/v1/datasets", json={**body, "view": "nope"})
        assert r.status_code == 404 and "'nope'" in r.json()["detail"]
        r = hub.post("/v1/datasets", json={**body, "semantics": "asof"})
        assert r.status_code == 422 and "'asof'" in r.json()["detail"]
        mixed = [{**LABELS[0], "label": "worn"}, LABELS[1]]
        r = hub.post("/v1/datasets", json={**body, "labels": mixed})
        assert r.status_code == 422 and "one type" in r.json()["detail"]

    table = load_dataset(tmp_path, "wear", built["version"])
    assert table.column("label").to_pylist() == [0, 1, 0, 1]
    assert table.column("temp.max").to_pylist() == [12.0, 100.0, None, None]


@pytest.mark.parametrize("cmd", [["features", "dataset-build"], ["features", "datasets"]], ids=" ".join)
def test_commands_have_help(cmd):
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "--hub" in result.output and "--json" in result.output


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def test_cli_builds_from_csv_and_jsonl_and_lists(served, materialized, tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("tenant,device,ts_us,label\n" + "".join(
        f"{x['tenant']},{x['device']},{x['ts_us']},{x['label']}\n" for x in LABELS))
    jsonl_file = tmp_path / "labels.jsonl"
    jsonl_file.write_text("".join(json.dumps(x) + "\n" for x in LABELS))

    from_csv = json.loads(run("features", "dataset-build", "wear", "--view", VIEW.name, "--labels", str(csv_file),
                              "--label-source", "tickets", "--hub", served, "--json").stdout)
    from_jsonl = json.loads(run("features", "dataset-build", "wear", "--view", VIEW.name, "--labels",
                                str(jsonl_file), "--label-source", "tickets", "--hub", served, "--json").stdout)
    assert from_csv == from_jsonl  # the same labels, however written: the same version
    assert (from_csv["label_rows"], from_csv["null_feature_rows"]) == (4, 2)
    text = run("features", "dataset-build", "wear", "--view", VIEW.name, "--labels", str(csv_file),
               "--semantics", "event", "--hub", served).stdout
    assert "4 label(s), 2 with null features" in text and materialized in text

    listed = json.loads(run("features", "datasets", "--hub", served, "--json").stdout)
    assert len(listed) == 2 and {d["semantics"] for d in listed} == {"arrival", "event"}
    assert "2 dataset version(s)" in run("features", "datasets", "wear", "--hub", served).stdout

    bad = tmp_path / "labels.txt"
    bad.write_text("x")
    assert "neither .csv nor .jsonl" in run("features", "dataset-build", "wear", "--view", VIEW.name,
                                             "--labels", str(bad), "--hub", served, code=2).output
