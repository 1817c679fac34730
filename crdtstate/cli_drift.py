"""``crdtstate drift``: fetch the relay's view of a namespace and report lag and drift.

:func:`register` adds the verb to the ``crdtstate`` parser's subparsers (``func`` set to
:func:`run_drift`). :func:`fetch_view` is the one network call: ``GET
/v1/namespaces/<ns>/replicas`` with aiohttp, translated into crdtstate errors at this seam.
The maths and the renderings live in :mod:`crdtstate.drift`.

Exit status (for cron and CI): 0 healthy, 1 on an alert, 2 when the relay cannot be
reached or answers something unusable (and on usage errors).

Imports ``drift``, ``errors``, ``_ids`` and aiohttp/rich; never ``replica``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from pydantic import ValidationError as PydanticValidationError
from rich.console import Console

from crdtstate._ids import validate_namespace
from crdtstate.drift import ReplicasView, Thresholds, assess, render_json, render_table
from crdtstate.errors import AuthError, ConnectError, RemoteProtocolError

RESPONSE_BYTES_MAX = 64 << 20
"""Largest view accepted from a relay."""

TOKEN_ENV = "CRDTSTATE_TOKEN"

Subparsers = Any
"""``argparse._SubParsersAction``, which argparse does not export."""


class RelayError(RemoteProtocolError):
    """The relay answered, but not with a usable replicas view (status, body or shape)."""


def relay_http_base(url: str) -> str:
    """The HTTP base URL of a relay given as ``http(s)://`` or ``ws(s)://`` (``/yjs`` dropped).

    Raises:
        ValueError: another scheme, or no host.
    """
    parts = urlsplit(url.strip())
    scheme = {"http": "http", "https": "https", "ws": "http", "wss": "https"}.get(
        parts.scheme.lower()
    )
    if scheme is None or not parts.hostname:
        raise ValueError(f"relay URL {url!r}: use http(s)://HOST:PORT or ws(s)://HOST:PORT")
    path = parts.path.rstrip("/")
    if parts.scheme.lower() in ("ws", "wss") and path.endswith("/yjs"):
        path = path[: -len("/yjs")]
    return urlunsplit((scheme, parts.netloc, path, "", ""))


async def fetch_view(
    relay: str, namespace: str, *, token: str | None = None, timeout_s: float = 10.0
) -> ReplicasView:
    """Fetch the relay's replicas view of ``namespace``.

    Raises:
        ValueError: a bad relay URL or namespace.
        ConnectError: the relay cannot be reached (refused, DNS, timeout, reset).
        AuthError: the relay refused the token (401/403).
        RelayError: any other status, an oversized or malformed body, another namespace.
    """
    ns = validate_namespace(namespace)
    url = f"{relay_http_base(relay)}/v1/namespaces/{quote(ns, safe='')}/replicas"
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers, allow_redirects=False) as response,
        ):
            if response.status in (401, 403):
                raise AuthError(f"{url}: the relay refused the token (HTTP {response.status})")
            if response.status == 404:
                raise RelayError(f"{url}: the relay knows no namespace {ns!r} (HTTP 404)")
            if response.status != 200:
                raise RelayError(f"{url}: HTTP {response.status} {response.reason or ''}".rstrip())
            body = await response.content.read(RESPONSE_BYTES_MAX + 1)
    except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
        raise ConnectError(f"cannot reach the relay at {url}: {_describe(exc)}") from exc
    except aiohttp.ClientError as exc:
        raise RelayError(f"{url}: {_describe(exc)}") from exc
    if len(body) > RESPONSE_BYTES_MAX:
        raise RelayError(f"{url}: response larger than {RESPONSE_BYTES_MAX} bytes")
    try:
        view = ReplicasView.model_validate_json(body)
    except PydanticValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"msg": str(exc), "loc": ()}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise RelayError(
            f"{url}: not a replicas view: {first.get('msg')}" + (f" (at {where})" if where else "")
        ) from exc
    if view.namespace != ns:
        raise RelayError(f"{url}: the relay answered for namespace {view.namespace!r}")
    return view


def _error(message: str) -> None:
    print(f"crdtstate drift: {message}", file=sys.stderr)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


def _positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
        return value

    return parse


def register(subparsers: Subparsers) -> None:
    """Add ``drift`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "drift",
        help="lag and drift of every replica of a namespace (exit 1 on an alert)",
        description=(
            "Ask the relay for every replica of a namespace and report lag, convergence and "
            "alerts. Exit 0 healthy, 1 on an alert, 2 when the relay cannot be reached."
        ),
    )
    # SUPPRESS keeps a value given before the verb (the main parser's) when not repeated.
    parser.add_argument("--relay", metavar="URL", default=argparse.SUPPRESS, help="relay URL")
    parser.add_argument("--namespace", metavar="NS", default=argparse.SUPPRESS)
    parser.add_argument(
        "--token", metavar="TOKEN", default=argparse.SUPPRESS, help=f"default: ${TOKEN_ENV}"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--max-lag-seconds", type=_positive(float), default=300.0, metavar="S", help="default 300"
    )
    parser.add_argument(
        "--max-recovery-seconds",
        type=_positive(float),
        default=30.0,
        metavar="S",
        help="default 30",
    )
    parser.add_argument(
        "--max-outbox", type=_positive(int), default=None, metavar="N", help="default: no limit"
    )
    parser.add_argument(
        "--max-silence-seconds",
        type=_positive(float),
        default=None,
        metavar="S",
        help="alert when a replica sent nothing for this long (default: --max-lag-seconds)",
    )
    parser.add_argument("--watch", action="store_true", help="refresh until interrupted")
    parser.add_argument(
        "--interval-seconds", type=_positive(float), default=5.0, metavar="S", help="--watch period"
    )
    parser.add_argument(
        "--watch-count",
        type=_positive(int),
        default=None,
        metavar="N",
        help="stop after N refreshes",
    )
    parser.add_argument(
        "--timeout-seconds", type=_positive(float), default=10.0, metavar="S", help="per request"
    )
    parser.set_defaults(func=run_drift)


def run_drift(args: argparse.Namespace) -> int:
    """Run ``crdtstate drift``; returns the exit status (0 healthy, 1 alert, 2 unreachable)."""
    relay = getattr(args, "relay", None)
    namespace = getattr(args, "namespace", None)
    if not relay or not namespace:
        _error("error: give --relay URL and --namespace NS")
        return 2
    try:
        relay_http_base(relay)
        validate_namespace(namespace)
        thresholds = Thresholds(
            lag_s_max=args.max_lag_seconds,
            recovery_s_max=args.max_recovery_seconds,
            outbox_len_max=args.max_outbox,
            silence_s_max=args.max_silence_seconds,
        )
    except ValueError as exc:
        _error(f"error: {exc}")
        return 2
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV)
    # Piped output (cron, CI logs) gets a wide table instead of rich's 80-column default.
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    rounds = args.watch_count if args.watch else 1
    status = 2
    done = 0
    with contextlib.suppress(KeyboardInterrupt):
        while rounds is None or done < rounds:
            if done:
                time.sleep(args.interval_seconds)
            status = _one_round(relay, namespace, token, thresholds, args, out)
            done += 1
    return status


def _one_round(
    relay: str,
    namespace: str,
    token: str | None,
    thresholds: Thresholds,
    args: argparse.Namespace,
    out: Console,
) -> int:
    try:
        view = asyncio.run(
            fetch_view(relay, namespace, token=token, timeout_s=args.timeout_seconds)
        )
    except (ConnectError, AuthError, RelayError, ValueError) as exc:
        _error(str(exc))
        return 2
    report = assess(view, time.time(), thresholds)
    if args.json:
        text = render_json(report)
        out.print(text.replace("\n", "") if args.watch else text, markup=False, soft_wrap=True)
    else:
        if args.watch and out.is_terminal:
            out.clear()
        out.print(render_table(report))
    return report.exit_code


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with this verb (tests, ``python -m crdtstate.cli_drift``)."""
    parser = argparse.ArgumentParser(prog="crdtstate")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``drift``; returns the exit status."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
