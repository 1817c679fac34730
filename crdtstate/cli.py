"""``crdtstate``: inspect and write state from a shell.

Usage::

    crdtstate --store DIR --namespace NS declare karma pncounter
    crdtstate --store DIR --namespace NS inc karma 3
    crdtstate --store DIR --namespace NS --relay ws://127.0.0.1:8765 get karma

With ``--relay`` a write exits only once the relay acknowledged it (or fails after
``--timeout`` seconds, the write kept in the outbox to be sent later) and a read first
catches up with the relay. Exit status: 0 ok, 1 an alert (audits, drift), 2 bad input
(usage, unknown field, wrong kind, bad value, unreadable file), 3 the store cannot be used,
4 the relay did not answer in time.

Imports ``replica`` and below; the mirror and drift verbs live in their own modules.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from crdtstate import _codec
from crdtstate.crdt.base import Field, FieldKind, ValueType
from crdtstate.errors import (
    CrdtStateError,
    InvalidUpdate,
    SchemaError,
    StoreError,
    SyncTimeout,
    TransportError,
    ValidationError,
)
from crdtstate.portable import Export, ExportFileError, read_export, write_export
from crdtstate.replica import Replica

EXIT_OK = 0
EXIT_ALERT = 1
EXIT_INPUT = 2
EXIT_STORE = 3
EXIT_RELAY = 4

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

_VERB_KINDS: dict[str, tuple[FieldKind, ...]] = {
    "set": (FieldKind.LWW, FieldKind.LWWMAP),
    "inc": (FieldKind.GCOUNTER, FieldKind.PNCOUNTER),
    "dec": (FieldKind.PNCOUNTER,),
    "add": (FieldKind.ORSET,),
    "remove": (FieldKind.ORSET,),
    "append": (FieldKind.LOG,),
}


class CliError(Exception):
    """A problem to report in one line with an exit status."""

    def __init__(self, message: str, status: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.status = status


def parse_value(field: Field[Any], text: str, *, as_json: bool = False) -> Any:
    """Parse command-line text into a value of ``field``'s type.

    ``str`` fields take the text as is (unless ``as_json``); ``int``/``float``/``bool``
    parse it; ``json`` fields (and ``as_json``) decode JSON.

    Raises:
        ValidationError: the text does not parse as the field's type.
    """
    vt = field.json_type
    if as_json or vt is ValueType.JSON:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(field.name, f"{text!r} is not valid JSON: {exc.msg}") from None
    if vt is ValueType.STR:
        return text
    if vt is ValueType.INT:
        try:
            return int(text, 10)
        except ValueError:
            raise ValidationError(field.name, f"expected an integer, got {text!r}") from None
    if vt is ValueType.FLOAT:
        try:
            value = float(text)
        except ValueError:
            raise ValidationError(field.name, f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValidationError(field.name, f"expected a finite number, got {text!r}")
        return value
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValidationError(field.name, f"expected true or false, got {text!r}")


def _check_kind(field: Field[Any], verb: str) -> None:
    allowed = _VERB_KINDS[verb]
    if field.kind not in allowed:
        kinds = " or ".join(k.value for k in allowed)
        raise CliError(
            f"field {field.name!r} is of kind {field.kind.value}; '{verb}' works on {kinds}"
        )


def _count(field: Field[Any], text: str | None) -> int:
    if text is None:
        return 1
    try:
        n = int(text, 10)
    except ValueError:
        raise CliError(
            f"field {field.name!r}: count must be a positive integer, got {text!r}"
        ) from None
    return n


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``crdtstate`` (exposed for docs and tests)."""
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="crdtstate", description="Inspect and write crdtstate namespaces."
    )
    parser.add_argument("--store", default=env("CRDTSTATE_STORE"), help="replica data dir")
    parser.add_argument("--namespace", "-n", default=env("CRDTSTATE_NAMESPACE"))
    parser.add_argument("--relay", default=env("CRDTSTATE_RELAY"), help="ws:// URL of a relay")
    parser.add_argument("--token", default=env("CRDTSTATE_TOKEN"), help="relay access token")
    parser.add_argument("--timeout", type=float, default=10.0, help="relay wait, seconds")
    parser.add_argument("--durability", choices=["sync", "batch"], default="sync")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    p = sub.add_parser("declare", help="declare FIELD KIND[:TYPE] (idempotent)")
    p.add_argument("field")
    p.add_argument("kind", help="lww|gcounter|pncounter|orset|lwwmap|log, optionally :TYPE")
    p = sub.add_parser("get", help="print a field's value as JSON")
    p.add_argument("field")
    p.add_argument("key", nargs="?", help="one key of an lwwmap")
    p = sub.add_parser("set", help="set FIELD VALUE, or set FIELD KEY VALUE for an lwwmap")
    p.add_argument("field")
    p.add_argument("args", nargs="+")
    for verb in ("inc", "dec"):
        p = sub.add_parser(verb, help=f"{verb} FIELD [N]")
        p.add_argument("field")
        p.add_argument("n", nargs="?")
    for verb in ("add", "remove"):
        p = sub.add_parser(verb, help=f"{verb} FIELD VALUE (OR-set)")
        p.add_argument("field")
        p.add_argument("value")
    p = sub.add_parser("append", help="append FIELD JSON (log)")
    p.add_argument("field")
    p.add_argument("value")
    p = sub.add_parser("dump", help="every field's value")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p = sub.add_parser("export", help="write the whole state to FILE (portable)")
    p.add_argument("file", type=Path)
    p = sub.add_parser("import", help="merge the state in FILE (an export)")
    p.add_argument("file", type=Path)
    _register_extensions(sub)
    return parser


def _register_extensions(sub: Any) -> None:
    """Verbs that live in their own modules (mirrors and lint, drift): each sets ``func``."""
    from crdtstate import cli_drift, cli_mirror

    cli_mirror.register(sub)
    cli_drift.register(sub)


def _open(args: argparse.Namespace) -> Replica[Any]:
    if not args.store:
        raise CliError("--store DIR is required (or set CRDTSTATE_STORE)")
    if not args.namespace:
        raise CliError("--namespace NS is required (or set CRDTSTATE_NAMESPACE)")
    return Replica.open(
        args.store,
        args.namespace,
        durability=args.durability,
        relay=args.relay or None,
        token=args.token,
    )


def _print_json(value: Any) -> None:
    print(json.dumps(value, sort_keys=True, ensure_ascii=False))


def _write(replica: Replica[Any], args: argparse.Namespace, action: Callable[[], Any]) -> None:
    action()
    replica.flush()
    if args.relay:
        try:
            seq = replica.wait_acked_blocking(timeout_s=args.timeout)
        except SyncTimeout as exc:
            raise CliError(
                f"the relay did not acknowledge within {args.timeout:g} s ({exc}); the write is "
                "kept in the local outbox and is sent on the next connection",
                EXIT_RELAY,
            ) from None
        print(f"acknowledged as seq {seq}", file=sys.stderr)


def _catch_up(replica: Replica[Any], args: argparse.Namespace) -> None:
    if args.relay:
        try:
            replica.wait_synced(args.timeout)
        except SyncTimeout as exc:
            raise CliError(
                f"could not catch up with the relay within {args.timeout:g} s ({exc})", EXIT_RELAY
            ) from None


def run_state_verb(replica: Replica[Any], args: argparse.Namespace) -> int:
    """Run one of the state verbs on an open replica; returns the exit status."""
    verb = args.verb
    if verb == "declare":
        kind, _, value_type = args.kind.partition(":")
        field = replica.declare(args.field, kind, value_type or "json")
        replica.flush()
        _write(replica, args, lambda: None)
        print(f"{field.name}: {field.kind.value}:{field.json_type.value}")
        return EXIT_OK
    if verb in ("get", "dump", "export"):
        _catch_up(replica, args)
    if verb == "dump":
        return _dump(replica, as_json=args.json)
    if verb == "export":
        export = Export(
            namespace=replica.namespace,
            update=replica.export_update(),
            schema=replica.doc.declared(),
            digest=replica.digest(),
            replica_id=replica.replica_id,
            exported_at=time.time(),
        )
        write_export(args.file, export)
        print(f"exported {replica.namespace} ({len(export.update)} bytes) to {args.file}")
        return EXIT_OK
    if verb == "import":
        try:
            export = read_export(args.file)
        except ExportFileError as exc:
            raise CliError(str(exc)) from None
        if export.namespace != replica.namespace:
            raise CliError(
                f"{args.file} holds namespace {export.namespace!r}, not {replica.namespace!r}"
            )
        _write(replica, args, lambda: replica.import_update(export.update, source=str(args.file)))
        print(f"imported {args.file} into {replica.namespace}")
        return EXIT_OK

    field = replica.field(args.field)
    if verb == "get":
        if args.key is not None:
            if field.kind is not FieldKind.LWWMAP:
                raise CliError(f"field {field.name!r} is a {field.kind.value}; keys are for lwwmap")
            _print_json(field.raw_value().get(args.key))
        else:
            _print_json(field.raw_value())
        return EXIT_OK
    _check_kind(field, verb)
    f: Any = field
    if verb == "set":
        if field.kind is FieldKind.LWWMAP:
            if len(args.args) != 2:
                raise CliError(f"field {field.name!r} is an lwwmap: use set FIELD KEY VALUE")
            key: Any = args.args[0]
            if getattr(field, "key_type", str) is int:
                try:
                    key = int(key)
                except ValueError:
                    raise CliError(
                        f"field {field.name!r}: keys are integers, got {key!r}"
                    ) from None
            value = parse_value(field, args.args[1])
            _write(replica, args, lambda: f.set(key, value))
        else:
            if len(args.args) != 1:
                raise CliError(f"field {field.name!r} is an lww register: use set FIELD VALUE")
            value = parse_value(field, args.args[0])
            _write(replica, args, lambda: f.set(value))
    elif verb in ("inc", "dec"):
        n = _count(field, args.n)
        _write(replica, args, lambda: getattr(f, verb)(n))
    elif verb == "add":
        value = parse_value(field, args.value)
        _write(replica, args, lambda: f.add(value))
    elif verb == "remove":
        value = parse_value(field, args.value)
        present = value in f
        _write(replica, args, lambda: f.remove(value))
        if not present:
            print(f"{field.name}: {args.value!r} was not present", file=sys.stderr)
    elif verb == "append":
        value = parse_value(field, args.value, as_json=True)
        _write(replica, args, lambda: f.append(value))
    _print_json(field.raw_value())
    return EXIT_OK


def _dump(replica: Replica[Any], *, as_json: bool) -> int:
    values = replica.to_dict()
    if as_json:
        _print_json(values)
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    declared = replica.doc.declared()
    table = Table(title=f"{replica.namespace} @ {replica.replica_id}")
    for column in ("field", "kind", "type", "value"):
        table.add_column(column)
    for name, value in values.items():
        desc = declared.get(name, {})
        text = _codec.dumps(value)
        table.add_row(name, str(desc.get("kind", "?")), str(desc.get("type", "?")), text)
    console = Console(width=max(100, Console().width))
    console.print(table)
    for violation in replica.violations():
        console.print(f"[yellow]schema violation[/] {violation.field}: {violation.detail}")
    return EXIT_OK


def _fail(message: str, status: int) -> NoReturn:
    print(f"crdtstate: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crdtstate`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Extension verbs set ``func`` (args -> exit status); ``handler`` is accepted as well.
    handler = getattr(args, "func", None) or getattr(args, "handler", None)
    try:
        if handler is not None:
            return int(handler(args))
        replica = _open(args)
        try:
            return run_state_verb(replica, args)
        finally:
            replica.close()
    except CliError as exc:
        _fail(str(exc), exc.status)
    except (SchemaError, ValidationError, InvalidUpdate, ValueError) as exc:
        _fail(str(exc), EXIT_INPUT)
    except StoreError as exc:
        _fail(str(exc), EXIT_STORE)
    except (SyncTimeout, TransportError) as exc:
        _fail(str(exc), EXIT_RELAY)
    except CrdtStateError as exc:
        _fail(str(exc), EXIT_INPUT)


if __name__ == "__main__":
    sys.exit(main())
