"""From a version's manifest.json to what a device installs: one `protocol.Manifest` per artifact.

The recipe's manifest.json describes a whole version (four artifacts, metrics, the recipe); the
signed manifest a device verifies (protocol/manifest.py) describes one runnable model, strictly,
and refuses unknown fields. This is the mapping between the two, so the registry does not have
to guess it:

    name, classes                  as they are
    version                        the recipe's version (v1): one per artifact, told apart by runtime
    feature_spec                   feature_spec.version (the hash protocol.features computes)
    artifacts, runtime             the one artifact, its format and precision
    self_test                      the recipe's sample rows, that artifact's expected probabilities,
                                   and its tolerance

`created_at` is the caller's (the registry's): it is when the manifest is signed, not when the
model was trained, and keeping it out of the recipe keeps the recipe's files reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from protocol import Artifact, Manifest, ModelFormat, Quantization, RuntimeHints, SelfTest, SelfTestSample


def device_manifest(recipe: Mapping[str, Any], artifact: str, *, created_at: datetime) -> Manifest:
    try:
        entry = recipe["artifacts"][artifact]
    except KeyError:
        raise ValueError(
            f"Artifact {artifact!r} is not in {recipe.get('name')} {recipe.get('version')}; "
            f"it has {sorted(recipe.get('artifacts', {}))!r}."
        ) from None
    test = recipe["self_test"]
    expected = test["expected"][artifact]
    return Manifest(
        name=recipe["name"],
        version=recipe["version"],
        created_at=created_at,
        artifacts=(Artifact(artifact, entry["sha256"], entry["bytes"]),),
        runtime=RuntimeHints(ModelFormat(entry["format"]), Quantization(entry["precision"]), artifact),
        feature_spec=recipe["feature_spec"]["version"],
        classes=tuple(recipe["classes"]),
        self_test=SelfTest(
            tuple(SelfTestSample(tuple(x), tuple(p)) for x, p in zip(test["inputs"], expected["probabilities"])),
            expected["atol"],
        ),
    )
