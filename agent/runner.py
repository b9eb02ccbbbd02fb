"""Running the agent as a process: logging, SIGTERM/SIGINT, exit codes."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from .config import load_config
from .daemon import Agent
from .errors import ConfigError

# Exit codes of `edgeloop agent run` (documented in docs/operations.md; tests check them).
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_CRASH = 70


def run_agent(config_path: str | Path, *, until_drained: bool = False) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        logging.getLogger("edgeloop.agent").error("%s", exc)
        return EXIT_CONFIG
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(config).run(stop, until_drained=until_drained)

    try:
        asyncio.run(main())
    except Exception:
        logging.getLogger("edgeloop.agent").exception("agent crashed")
        return EXIT_CRASH
    return EXIT_OK
