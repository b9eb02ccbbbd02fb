"""`python -m agent --config FILE [--until-drained]`: the daemon without the CLI's dependencies."""

from __future__ import annotations

import argparse
import sys

from .runner import run_agent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent", description="Run the edgeloop agent daemon.")
    p.add_argument("--config", required=True, help="the agent's TOML config file")
    p.add_argument("--until-drained", action="store_true", help="exit once inputs finish and all is acknowledged")
    args = p.parse_args(argv)
    return run_agent(args.config, until_drained=args.until_drained)


if __name__ == "__main__":
    sys.exit(main())
