"""The `edgeloop` command: the one place that composes agent, hub and simulators (lazily)."""
