"""``crdtstate mirror audit|sync|adopt`` and ``crdtstate lint``: the mirrors' command line.

:func:`register` adds the verbs to the ``crdtstate`` parser's subparsers; each leaf parser
sets ``func`` (``args -> exit status``). The common options ``--store DIR --namespace NS``
(and ``--relay URL --token T`` when the main parser has them) are read from ``args``; the
verbs also accept them after the verb. Mirrors come from ``--mirrors FILE`` (TOML, see
:mod:`crdtstate.mirrors.config`) or ``$CRDTSTATE_MIRRORS``, since the CLI opens replicas
without the agent's schema.

Exit status: 0 all in line / done, 1 findings or something left undone, 2 usage or
environment errors (no store, store locked, bad config).

Imports ``replica``, ``mirrors`` and ``lint``; nothing imports this module but ``cli``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crdtstate._ids import validate_namespace
from crdtstate.errors import CrdtStateError, SyncTimeout
from crdtstate.lint import LintKind, lint_paths, mirrored_names
from crdtstate.mirrors import (
    AdoptError,
    MirrorConfigError,
    MirrorSet,
    load_mirror_config,
)
from crdtstate.replica import Replica

MIRRORS_ENV = "CRDTSTATE_MIRRORS"
SYNC_TIMEOUT_S = 30.0

Subparsers = Any
"""``argparse._SubParsersAction``, which argparse does not export."""


class UsageError(Exception):
    """The command line or the environment does not allow the command (exit status 2)."""


def register(subparsers: Subparsers) -> None:
    """Add ``mirror`` (with ``audit``, ``sync``, ``adopt``) and ``lint`` to ``subparsers``."""
    mirror = subparsers.add_parser(
        "mirror",
        help="audit, repair or adopt the legacy files mirroring fields",
        description="Keep legacy mirror files in line with the state (the only source of truth).",
    )
    verbs = mirror.add_subparsers(dest="mirror_command", metavar="VERB", required=True)

    audit = verbs.add_parser(
        "audit",
        help="report missing, stale and hand-edited mirror files (exit 1 on any)",
        description="Compare every mirror file with the state; exit 1 on any finding.",
    )
    _common_options(audit)
    audit.add_argument("--json", action="store_true", help="print the findings as JSON")
    audit.set_defaults(func=run_audit)

    sync = verbs.add_parser(
        "sync",
        help="rewrite every mirror file from the state",
        description="Rewrite every mirror file from the state, reporting what it repaired.",
    )
    _common_options(sync)
    sync.add_argument(
        "--force",
        action="store_true",
        help="also overwrite files holding a value this replica never had (see audit)",
    )
    sync.set_defaults(func=run_sync)

    adopt = verbs.add_parser(
        "adopt",
        help="make a hand edit of a mirror file a real write of its field",
        description=(
            "Read FILE back through its mirror's mapping and write the value to the field, "
            "so the manual fix propagates to every replica instead of being overwritten."
        ),
    )
    _common_options(adopt)
    adopt.add_argument("file", metavar="FILE", help="the hand-edited mirror file")
    adopt.set_defaults(func=run_adopt)

    lint = subparsers.add_parser(
        "lint",
        help="find code that writes a mirrored file directly (single-writer check)",
        description=(
            "Parse the Python files under PATH and report every direct write to a mirrored "
            "file: crdtstate must be its only writer. Exit 1 on any finding."
        ),
    )
    lint.add_argument("paths", metavar="PATH", nargs="+", help="files or directories to check")
    lint.add_argument(
        "--mirrors",
        metavar="FILE",
        help=f"mirror config (TOML) naming the mirrored files (default: ${MIRRORS_ENV})",
    )
    lint.add_argument(
        "--file",
        metavar="NAME",
        action="append",
        default=[],
        help="a mirrored file name to look for (repeatable; adds to --mirrors)",
    )
    lint.add_argument(
        "--exclude",
        metavar="GLOB",
        action="append",
        default=[],
        help="skip files or directories matching GLOB (repeatable)",
    )
    lint.set_defaults(func=run_lint)


def _common_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps a value given before the verb (the main parser's) when not repeated.
    parser.add_argument("--store", metavar="DIR", default=argparse.SUPPRESS, help="data dir")
    parser.add_argument("--namespace", metavar="NS", default=argparse.SUPPRESS)
    parser.add_argument("--relay", metavar="URL", default=argparse.SUPPRESS)
    parser.add_argument("--token", metavar="TOKEN", default=argparse.SUPPRESS)
    parser.add_argument(
        "--mirrors",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"mirror config (TOML) naming field -> mirrors (default: ${MIRRORS_ENV})",
    )


def _mirrors_path(args: argparse.Namespace) -> str:
    path = getattr(args, "mirrors", None) or os.environ.get(MIRRORS_ENV)
    if not path:
        raise UsageError(f"give --mirrors FILE (or set ${MIRRORS_ENV}) naming the mirrors")
    return str(path)


@contextmanager
def _opened(args: argparse.Namespace) -> Iterator[tuple[Replica[Any], MirrorSet]]:
    """The replica named by ``--store``/``--namespace`` and its mirrors, bound; closed after."""
    store = getattr(args, "store", None)
    namespace = getattr(args, "namespace", None)
    if not store or not namespace:
        raise UsageError("give --store DIR and --namespace NS")
    try:
        ns = validate_namespace(namespace)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    mirrors = MirrorSet.from_config(_mirrors_path(args), interval_s=None, on_report=None)
    if not (Path(store) / f"{ns}.sqlite3").is_file():
        raise UsageError(f"no replica of namespace {ns!r} in {store}")
    relay = getattr(args, "relay", None)
    replica: Replica[Any] = Replica.open(
        store, ns, None, relay=relay, token=getattr(args, "token", None)
    )
    try:
        if relay:
            try:
                replica.wait_synced(SYNC_TIMEOUT_S)
            except SyncTimeout as exc:
                _warn(f"not in sync with {relay} ({exc}); using the local state")
        mirrors.bind(replica)
        yield replica, mirrors
    finally:
        mirrors.close()
        replica.close()


def _guarded(body: Callable[[], int]) -> int:
    try:
        return body()
    except UsageError as exc:
        _error(str(exc))
    except MirrorConfigError as exc:
        _error(f"mirror config: {exc}")
    except CrdtStateError as exc:
        _error(str(exc))
    except OSError as exc:
        _error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    return 2


def _error(message: str) -> None:
    print(f"crdtstate: error: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"crdtstate: warning: {message}", file=sys.stderr)


def run_audit(args: argparse.Namespace) -> int:
    """``crdtstate mirror audit``: print the findings; 1 if any, 0 if none, 2 on errors."""

    def body() -> int:
        with _opened(args) as (replica, mirrors):
            findings = mirrors.audit()
            if args.json:
                out = [
                    {
                        "kind": str(f.kind),
                        "path": str(f.path),
                        "field": f.field,
                        "key": f.key,
                        "message": f.message,
                        "hint": f.hint,
                    }
                    for f in findings
                ]
                print(json.dumps({"namespace": replica.namespace, "findings": out}, indent=2))
            else:
                for f in findings:
                    print(f"{str(f.kind).upper():13} {f.message}")
                    print(f"{'':13} -> {f.hint}")
                total = len(mirrors.mirrors)
                if findings:
                    print(f"{len(findings)} finding(s) in {total} mirror(s) of {replica.namespace}")
                else:
                    print(f"all {total} mirror(s) of {replica.namespace} in line with the state")
            return 1 if findings else 0

    return _guarded(body)


def run_sync(args: argparse.Namespace) -> int:
    """``crdtstate mirror sync``: rewrite every mirror; 1 if one was skipped or failed."""

    def body() -> int:
        with _opened(args) as (replica, mirrors):
            results = mirrors.sync(force=args.force)
            for result in results:
                print(f"{result.action!s:9} {result.detail}")
            undone = [r for r in results if not r.ok]
            if undone:
                print(f"{len(undone)} mirror(s) of {replica.namespace} not in line (see above)")
                return 1
            repaired = sum(1 for r in results if r.finding is not None)
            print(f"{len(results)} mirror(s) of {replica.namespace} in line; {repaired} repaired")
            return 0

    return _guarded(body)


def run_adopt(args: argparse.Namespace) -> int:
    """``crdtstate mirror adopt FILE``: write FILE's value to its field; 1 if it cannot be."""

    def body() -> int:
        with _opened(args) as (replica, mirrors):
            try:
                adoptions = mirrors.adopt(args.file)
            except AdoptError as exc:
                _error(str(exc))
                return 1
            for adoption in adoptions:
                print(adoption)
            if getattr(args, "relay", None) and any(a.written for a in adoptions):
                try:
                    replica.wait_acked_blocking(timeout_s=SYNC_TIMEOUT_S)
                except CrdtStateError as exc:
                    _warn(f"the write is durable here and will reach the relay later ({exc})")
            return 0

    return _guarded(body)


def run_lint(args: argparse.Namespace) -> int:
    """``crdtstate lint PATH``: print direct writes to mirrored files; 1 if any."""

    def body() -> int:
        names: dict[str, str] = {}
        config = getattr(args, "mirrors", None) or os.environ.get(MIRRORS_ENV)
        if config:
            names.update(mirrored_names(load_mirror_config(config).mirrors))
        for name in args.file:
            base = os.path.basename(name)
            if not base:
                raise UsageError(f"--file {name!r} does not name a file")
            names.setdefault(base, "a mirrored file")
        if not names:
            raise UsageError(
                f"nothing to look for: give --mirrors FILE (or ${MIRRORS_ENV}) or --file NAME"
            )
        report = lint_paths(args.paths, names, exclude=args.exclude)
        for finding in report.findings:
            print(finding)
        writes = sum(1 for f in report.findings if f.kind is LintKind.DIRECT_WRITE)
        unchecked = len(report.findings) - writes
        summary = f"{writes} direct write(s) to mirrored files in {report.files_checked} file(s)"
        if unchecked:
            summary += f"; {unchecked} path(s) could not be checked"
        print(summary)
        return report.exit_code

    return _guarded(body)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the common options and these verbs (tests, ``python -m``)."""
    parser = argparse.ArgumentParser(prog="crdtstate")
    parser.add_argument("--store", metavar="DIR")
    parser.add_argument("--namespace", metavar="NS")
    parser.add_argument("--relay", metavar="URL")
    parser.add_argument("--token", metavar="TOKEN")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the exit status."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
