"""``crdtstate-relay``: command line of the relay.

``serve`` runs the service until SIGTERM/SIGINT, then drains (stop accepting, commit, flush
acks, close clients with 1001, exit 0). ``snapshot`` asks a running relay to store a snapshot
of a namespace now. With ``--port 0`` the bound port is printed as
``crdtstate-relay listening on http://HOST:PORT`` (stdout, flushed) so scripts can find it.

Imports the relay app and settings; must not import the sync client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from relay.app import make_app
from relay.backend.base import BackendError
from relay.config import ConfigError, RelaySettings, load_settings
from relay.gcpolicy import FullCollectionTimer, freeze_startup_objects
from relay.keys import HUB, METRICS
from relay.logs import configure_logging
from relay.ops import event_loop_name

__all__ = ["main"]

_log = logging.getLogger("relay")

_OPEN_BANNER = """\
*****************************************************************************
*  crdtstate-relay is running in OPEN DEV MODE: no tokens are configured.   *
*  Anyone who can reach this port can read and write every namespace, and   *
*  unsigned updates are accepted. Configure [[tokens]] before exposing it.  *
*****************************************************************************"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crdtstate-relay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the relay")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8765, 0 = any)")
    serve.add_argument("--data", type=Path, default=None, help="data directory")
    serve.add_argument("--config", type=Path, default=None, help="relay.toml")
    snap = sub.add_parser("snapshot", help="ask a running relay to snapshot a namespace")
    snap.add_argument("namespace")
    snap.add_argument("--url", default="http://127.0.0.1:8765", help="relay base URL")
    snap.add_argument(
        "--token", default=os.environ.get("CRDTSTATE_RELAY_ADMIN_TOKEN"), help="admin token"
    )
    return parser


async def serve(settings: RelaySettings) -> None:
    """Run the relay until SIGTERM or SIGINT, then drain and return."""
    app = make_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = settings.port
    for address in runner.addresses:
        if isinstance(address, tuple):
            port = address[1]
            break
    if settings.is_open:
        print(_OPEN_BANNER, file=sys.stderr, flush=True)
        _log.warning("open dev mode: no tokens configured, unsigned updates accepted")
    metrics = app[METRICS]
    pause_timer = FullCollectionTimer(metrics.gc_full_pause.observe)
    pause_timer.install()
    metrics.gc_frozen_objects.set(freeze_startup_objects())
    print(f"crdtstate-relay listening on http://{settings.host}:{port}", flush=True)
    _log.info(
        "listening",
        extra={
            "host": settings.host,
            "port": port,
            "data": str(settings.data_dir),
            "event_loop": event_loop_name(),
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        _log.info("draining")
        await site.stop()
        await app[HUB].drain()
    finally:
        await runner.cleanup()
        pause_timer.uninstall()
    _log.info("stopped")


def _snapshot(url: str, namespace: str, token: str | None) -> int:
    request = urllib.request.Request(
        f"{url.rstrip('/')}/admin/namespaces/{namespace}/snapshot", method="POST", data=b""
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            print(json.dumps(json.load(response)))
            return 0
    except urllib.error.HTTPError as exc:
        print(
            f"crdtstate-relay: snapshot refused: {exc.code} {exc.read().decode()}", file=sys.stderr
        )
    except urllib.error.URLError as exc:
        print(f"crdtstate-relay: cannot reach {url}: {exc.reason}", file=sys.stderr)
    return 1


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``event_loop`` asks for: uvloop's (``uvloop``, or ``auto`` when it is
    installed), else None for asyncio's own. uvloop runs the same sockets and callbacks with
    less interpreter work per event, which is most of the relay's CPU per update."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``crdtstate-relay``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "snapshot":
        return _snapshot(args.url, args.namespace, args.token)
    try:
        settings = load_settings(
            args.config, overrides={"host": args.host, "port": args.port, "data_dir": args.data}
        )
    except ConfigError as exc:
        print(f"crdtstate-relay: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings))
    except (OSError, BackendError) as exc:  # BackendError: storage unreachable at start
        print(f"crdtstate-relay: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
