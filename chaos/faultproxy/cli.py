"""The ``toxiproxy`` subcommand of ``crdtstate-chaos``: run the API server until signalled.

Owns spec §1's flags (both ``-flag`` and ``--flag``): ``host``, ``port``, ``config``,
``seed``, ``version``; ``LOG_LEVEL`` (panic … trace) sets the log level, logs go to stderr.
Once the API listens, one JSON line is printed on stdout,
``{"event": "ready", "api": "http://127.0.0.1:8474", "port": 8474, "seed": N, "pid": P}``,
so a supervisor started with ``--port 0`` learns the real port. SIGTERM and SIGINT stop the
server cleanly (exit 0).

Must not import other subcommands; :mod:`chaos.__main__` mounts this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from chaos.faultproxy.api import API_VERSION
from chaos.faultproxy.errors import ListenError
from chaos.faultproxy.server import DEFAULT_API_PORT, FaultProxyServer, implementation_version

log = logging.getLogger(__name__)

_LOG_LEVELS = {
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be an integer, got {text!r}") from None


def add_toxiproxy_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``toxiproxy`` on an ``argparse`` subparsers object.

    Args:
        subparsers: the result of ``ArgumentParser.add_subparsers()``.

    Returns:
        The subcommand's parser (its handler is stored as the ``handler`` default).
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "toxiproxy",
        help="serve the Toxiproxy HTTP API (fault proxy)",
        description="Serve a Toxiproxy-compatible HTTP API and run its proxies.",
    )
    parser.add_argument("-host", "--host", default="localhost", help="API bind host")
    parser.add_argument(
        "-port", "--port", type=_port, default=DEFAULT_API_PORT, help="API port (0 = pick one)"
    )
    parser.add_argument("-config", "--config", default=None, help="JSON file in /populate format")
    parser.add_argument("-seed", "--seed", type=_seed, default=None, help="seed of all randomness")
    parser.add_argument("-version", "--version", action="store_true", help="print version, exit")
    parser.set_defaults(handler=run_toxiproxy)
    return parser


def _configure_logging() -> None:
    level = _LOG_LEVELS.get(os.environ.get("LOG_LEVEL", "info").strip().lower(), logging.INFO)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def run_toxiproxy(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT.

    Returns:
        The exit status: 0 after a clean stop, 1 when the API cannot listen.
    """
    if args.version:
        print(f"toxiproxy-server version {API_VERSION} ({implementation_version()})")
        return 0
    _configure_logging()
    try:
        asyncio.run(_serve(args))
    except ListenError as exc:
        log.error("cannot serve the API: %s", exc)
        return 1
    return 0


async def _serve(args: argparse.Namespace) -> None:
    server = FaultProxyServer(args.host, args.port, seed=args.seed, config_path=args.config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await server.start()
    try:
        ready = {
            "event": "ready",
            "api": server.url,
            "port": server.port,
            "seed": server.seed,
            "pid": os.getpid(),
        }
        print(json.dumps(ready), flush=True)
        await stopping.wait()
        log.info("stopping")
    finally:
        await server.stop()
