"""``crdtstate-chaos``: the chaos tooling's command line.

Owns the top-level parser and its subcommands (argparse subparsers); each subcommand lives
in its own module and registers itself with an ``add_<name>_command(subparsers)`` function
that sets a ``handler`` default. Today: ``toxiproxy`` (the fault proxy API server), ``run``
(a chaos scenario on real processes), ``check`` (re-check a saved run) and ``simulate``
(the deterministic simulation over many seeds).

Must not hold subcommand logic itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from chaos.faultproxy.cli import add_toxiproxy_command
from chaos.run import add_run_command
from chaos.sim.cli import add_simulate_command


def build_parser() -> argparse.ArgumentParser:
    """Return the ``crdtstate-chaos`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="crdtstate-chaos", description="crdtstate chaos tooling: fault proxy and harness."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_toxiproxy_command(subparsers)
    add_run_command(subparsers)
    add_simulate_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``crdtstate-chaos`` with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    args = build_parser().parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
