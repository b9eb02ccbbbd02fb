"""Where a registered version came from: training data, metrics, recipe command, code version.

Recorded once, at registration, next to the version, so an operator can tell months later what
a device runs and how it was made without the recipe folder at hand.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path


def version_metadata(recipe: dict, variants: list[str], given: dict, *, code: str) -> dict:
    """The stored metadata: defaults from the recipe, then the caller's keys, then each variant's file."""
    block = recipe.get("recipe") if isinstance(recipe.get("recipe"), dict) else {}
    meta = {"training_data": block.get("train"), "metrics": recipe.get("metrics"),
            "recipe_command": block.get("command"), "code_version": code}
    meta.update(given)
    meta["variants"] = {
        a: {"format": e["format"], "quantization": e["precision"], "bytes": e["bytes"], "sha256": e["sha256"]}
        for a in variants for e in [recipe["artifacts"][a]]
    }
    return meta


def code_version() -> str:
    """`git describe --always --dirty` of the source checkout (2 s at most), else the package version.

    Hazard: this describes the hub's code, which is the code that registered the model; the
    training code may differ (pass `code_version` in the metadata to say so).
    """
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():
        try:
            r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=repo, capture_output=True,
                               text=True, timeout=2, check=True)
            if r.stdout.strip():
                return r.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return importlib.metadata.version("edgeloop")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
