"""Agent config: typed, profile-merged, and errors that name the file, key and bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.config import WhenFull, load_config
from agent.errors import ConfigError

GOOD = """
[device]
tenant = "acme"
id = "pump-1"
profile = "rpi4"

[buffer]
path = "state/buffer.db"

[[inputs]]
type = "simulated"
"""


def test_profile_fills_in_and_config_overrides(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text(GOOD + '\n[health]\ninterval = "5s"\n')
    cfg = load_config(f)
    assert cfg.buffer.max_bytes == 256 * 2**20  # from firmware-configs/rpi4.toml
    assert cfg.buffer.when_full is WhenFull.DROP_OLDEST
    assert cfg.health.interval.total_seconds() == 5  # the file wins over the profile
    assert cfg.buffer.path == tmp_path / "state" / "buffer.db"  # relative to the config file


@pytest.mark.parametrize(
    ("patch", "key", "value"),
    [
        ('[buffer]\nwhen_full = "drop_everything"', "buffer.when_full", "drop_everything"),
        ('[buffer]\nmax_bytes = "lots"', "buffer.max_bytes", "lots"),
        ('[buffer]\nseal_interval = "soon"', "buffer.seal_interval", "soon"),
        ('[uplink]\nurl = "http://x"', "uplink.url", "http://x"),
        ('[uplink]\nmax_in_flight = 0', "uplink.max_in_flight", "0"),
    ],
)
def test_errors_name_key_and_value(tmp_path, patch, key, value):
    f = tmp_path / "agent.toml"
    f.write_text(GOOD.replace("[buffer]\npath", "[x]\npath").replace("[x]\n", "") + "\n" + patch + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    text = str(err.value)
    assert str(f) in text and key in text and value in text


def test_unknown_keys_and_bad_ids_are_rejected(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text(GOOD.replace('id = "pump-1"', 'id = "pump.1"\ncolour = "red"'))
    with pytest.raises(ConfigError) as err:
        load_config(f)
    text = str(err.value)
    assert "device.colour: unknown key" in text
    assert "'pump.1'" in text


def test_unknown_profile_lists_the_known_ones(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text(GOOD.replace("rpi4", "toaster"))
    with pytest.raises(ConfigError, match="toaster.*rpi4"):
        load_config(f)


def test_cli_config_check_exit_codes(tmp_path):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(GOOD)
    bad.write_text(GOOD + '\n[uplink]\nkind = "carrier-pigeon"\n')
    run = lambda f: subprocess.run([sys.executable, "-m", "edgeloop", "agent", "config", "check", str(f)],
                                   capture_output=True, text=True, timeout=60)
    ok = run(good)
    assert ok.returncode == 0 and "ok" in ok.stdout
    no = run(bad)
    assert no.returncode == 2
    assert "uplink.kind" in no.stderr and "carrier-pigeon" in no.stderr and str(bad) in no.stderr
    missing = run(tmp_path / "nope.toml")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_models_section_paths_resolve_and_trusted_keys_are_checked(tmp_path):
    from protocol import signing

    key = tmp_path / "keys" / "fleet.pem"
    key.parent.mkdir()
    key.write_bytes(signing.public_key_to_pem(signing.generate_private_key().public_key()))
    f = tmp_path / "agent.toml"
    f.write_text(GOOD + '\n[models]\ndir = "models"\ntrusted_keys = ["keys/fleet.pem"]\nhub_url = "http://hub:8700/"\n'
                 'formats = ["tflite:int8"]\n')
    cfg = load_config(f)
    assert cfg.models.dir == tmp_path / "models" and cfg.models.trusted_keys == (key,)
    assert cfg.models.hub_url == "http://hub:8700"
    run = lambda f: subprocess.run([sys.executable, "-m", "edgeloop", "agent", "config", "check", str(f)],
                                   capture_output=True, text=True, timeout=60)
    ok = run(f)
    assert ok.returncode == 0 and "trusting 1 key(s)" in ok.stdout, ok.stderr
    key.write_text("not a key")
    bad = run(f)
    assert bad.returncode == 2 and str(key) in bad.stderr
    f.write_text(GOOD + '\n[models]\ntrusted_keys = ["k.pem"]\nformats = ["onnx:int4"]\n')
    with pytest.raises(ConfigError, match="onnx:int4"):
        load_config(f)
