"""Model recipes: train, export, quantize; each version's small artifacts committed with their sha256."""
