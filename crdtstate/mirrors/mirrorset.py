"""``MirrorSet``: keeps a replica's mirror files in line with its state.

Owns the life of a set of mirrors on one replica: :meth:`MirrorSet.attach` subscribes to
the mirrored fields and re-syncs every file before returning (call it right after opening
the replica, before anything reads the files), every change of a field rewrites its mirrors
on the thread that made the change, and a background thread re-syncs every ``interval_s``
(so a direct write to a mirror is overwritten within one period and reported).
:meth:`MirrorSet.audit` reports missing, stale and hand-edited files;
:meth:`MirrorSet.adopt` turns a hand edit into a real write of the field.

The state is the only source of truth: files are read back only to report on them or to
adopt them when asked, and a missing file is never taken for the default. A mirror is
written only once the store has made the state durable, so after a crash a file never
shows a write the replica lost.

Locking: a change callback runs under the document's lock and then takes the set's I/O
lock; every other path reads the state first (document lock, released) and then takes the
I/O lock, so the two locks are always taken in that order.

Imports ``crdt``, ``errors`` and the mirrors' modules; ``Replica`` only for typing.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from crdtstate.crdt.base import Field, ValueType
from crdtstate.crdt.register import LWWMap, LWWRegister
from crdtstate.doc import Change
from crdtstate.errors import CrdtStateError, StoreClosedError, UnknownFieldError, ValidationError
from crdtstate.hlc import Stamp
from crdtstate.mirrors._atomic import remove_stale_temps
from crdtstate.mirrors.audit import Finding, FindingKind, classify
from crdtstate.mirrors.config import check_unique, load_mirror_config, mirrors_of_schema
from crdtstate.mirrors.errors import AdoptError, MirrorConfigError, MirrorError, MirrorWriteError
from crdtstate.mirrors.meta import FieldState, same_value, show
from crdtstate.mirrors.spec import Mirror, Observation
from crdtstate.schema import Schema

if TYPE_CHECKING:
    from crdtstate.replica import Replica

_log = logging.getLogger("crdtstate.mirrors")

DEFAULT_INTERVAL_S = 60.0
STOP_TIMEOUT_S = 10.0
FLUSH_TIMEOUT_S = 10.0


class SyncAction(enum.StrEnum):
    """What a sync did to one mirror."""

    WRITTEN = "written"
    """The file's value was (re)written."""
    REFRESHED = "refreshed"
    """The value was already right; only the ``last_synced`` record was refreshed."""
    SKIPPED = "skipped"
    """Left alone on purpose (see the detail): the file may hold something the state lacks."""
    FAILED = "failed"
    """The write failed or the value cannot be rendered; the old file is untouched."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    """The outcome of syncing one mirror.

    Attributes:
        mirror: the mirror.
        action: what was done.
        finding: what was wrong with the file before (``None``: it was in line).
        detail: a sentence for a person.
    """

    mirror: Mirror
    action: SyncAction
    finding: Finding | None
    detail: str

    @property
    def ok(self) -> bool:
        """The file now matches the state."""
        return self.action in (SyncAction.WRITTEN, SyncAction.REFRESHED)


@dataclass(frozen=True, slots=True)
class Adoption:
    """A mirror's content adopted as a write of its field.

    Attributes:
        mirror: the mirror whose content was adopted.
        old: the field's value before (JSON).
        new: the adopted value (JSON).
        stamp: the stamp of the write; ``None`` when nothing was written (already equal).
    """

    mirror: Mirror
    old: Any
    new: Any
    stamp: Stamp | None

    @property
    def written(self) -> bool:
        """Whether the field was written."""
        return self.stamp is not None

    def __str__(self) -> str:
        if self.stamp is None:
            return (
                f"{self.mirror.describe()}: already {show(self.new)} in the state; nothing written"
            )
        return (
            f"{self.mirror.describe()}: adopted {self.mirror.source} = {show(self.new)} "
            f"(was {show(self.old)}), write {self.stamp}"
        )


ReportCallback = Callable[[SyncResult], None]


def log_report(result: SyncResult) -> None:
    """Default report callback: a warning in the ``crdtstate.mirrors`` log."""
    level = logging.ERROR if result.action is SyncAction.FAILED else logging.WARNING
    _log.log(level, "%s", result.detail)


class MirrorSet:
    """The mirrors of one replica.

    Args:
        mirrors: the mirror declarations.
        root: directory relative mirror paths are taken from (default: the current one).
        interval_s: period of the background re-sync; ``None`` for none.
        on_report: called (outside every lock) for each sync that found a problem or could
            not fix one: hand edits, missing files, failed writes. Default: log a warning.

    Raises:
        MirrorConfigError: two mirrors write one file (or one key), or a bad interval.
    """

    def __init__(
        self,
        mirrors: Iterable[Mirror],
        *,
        root: str | os.PathLike[str] | None = None,
        interval_s: float | None = DEFAULT_INTERVAL_S,
        on_report: ReportCallback | None = log_report,
    ) -> None:
        base = Path(os.path.abspath(root if root is not None else os.getcwd()))
        self._mirrors = [m.resolved(base) for m in mirrors]
        check_unique(self._mirrors, "mirrors")
        if interval_s is not None and not (0 < interval_s < float("inf")):
            raise MirrorConfigError(f"interval_s must be a positive number, got {interval_s!r}")
        self.root = base
        self.interval_s = interval_s
        self._on_report = on_report
        self._replica: Replica[Any] | None = None
        self._io_lock = threading.Lock()
        self._written: dict[int, Stamp | None] = {}
        self._unsubscribes: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_schema(cls, schema: type[Schema], **kwargs: Any) -> MirrorSet:
        """The mirrors a schema declares in ``__mirrors__`` (keyword args as the constructor)."""
        return cls(mirrors_of_schema(schema), **kwargs)

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **kwargs: Any) -> MirrorSet:
        """The mirrors of a TOML/JSON config file (see :mod:`crdtstate.mirrors.config`).

        Raises:
            MirrorConfigError: the file is missing or wrong.
        """
        config = load_mirror_config(path)
        kwargs.setdefault("root", config.root)
        return cls(config.mirrors, **kwargs)

    @property
    def mirrors(self) -> list[Mirror]:
        """The mirrors, with absolute paths."""
        return list(self._mirrors)

    # -- life ------------------------------------------------------------------------------

    def bind(self, replica: Replica[Any]) -> None:
        """Check every mirror against ``replica``'s fields and use it; no file is touched.

        Raises:
            MirrorConfigError: a field is unknown, of a kind mirrors cannot project, or an
                ``LWWMap`` mirror lacks its ``map_key`` (every problem is listed).
            MirrorError: already bound to another replica.
        """
        if self._replica is not None and self._replica is not replica:
            raise MirrorError("this MirrorSet is already bound to another replica")
        problems = []
        for mirror in self._mirrors:
            try:
                _mirrored_field(replica, mirror)
            except MirrorConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise MirrorConfigError("; ".join(problems))
        self._replica = replica

    def attach(self, replica: Replica[Any]) -> list[SyncResult]:
        """Bind, subscribe to the mirrored fields, sync every mirror now, start the timer.

        Subscribing comes first so that no change can fall between the first sync and the
        subscription. Returns the results of the first sync (problems are also reported).

        Raises:
            MirrorConfigError: see :meth:`bind`.
        """
        if self._closed:
            raise MirrorError("this MirrorSet is closed")
        self.bind(replica)
        for mirror in self._mirrors:
            remove_stale_temps(mirror.path)
        for name in sorted({m.field for m in self._mirrors}):
            self._unsubscribes.append(replica.subscribe(name, self._on_change))
        results = self.sync()
        if self.interval_s is not None and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"crdtstate-mirrors-{replica.namespace}", daemon=True
            )
            self._thread.start()
        return results

    def close(self) -> None:
        """Unsubscribe and stop the background re-sync (waits for a sync in progress)."""
        self._closed = True
        for unsubscribe in self._unsubscribes:
            unsubscribe()
        self._unsubscribes.clear()
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> MirrorSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except StoreClosedError:
                return  # the replica was closed before this set: nothing left to mirror
            except Exception:  # the timer must outlive one bad round (logged, retried)
                _log.exception("periodic mirror sync failed")

    def _on_change(self, change: Change) -> None:
        if self._closed:
            return
        # A change makes the old file stale by definition: report only what else was wrong.
        self.sync(fields=[change.field], report_stale=False)

    # -- operations ------------------------------------------------------------------------

    def sync(
        self,
        fields: Iterable[str] | None = None,
        *,
        force: bool = False,
        report_stale: bool = True,
    ) -> list[SyncResult]:
        """Write the state into every mirror (of ``fields``, when given).

        A file is left alone (``SKIPPED``) when it holds something the state may lack: a
        record of a newer write than this replica has seen, or a value crdtstate never
        wrote while the field was never written (a legacy value: adopt it, or write the
        field); ``force=True`` overwrites anyway.

        Raises:
            MirrorError: not bound to a replica.
            StoreClosedError: the replica is closed.
        """
        wanted = None if fields is None else set(fields)
        chosen = [
            (index, mirror)
            for index, mirror in enumerate(self._mirrors)
            if wanted is None or mirror.field in wanted
        ]
        not_durable = self._flush()
        if not_durable is not None:
            results = [
                SyncResult(
                    m, SyncAction.FAILED, None, f"{m.describe()}: not written: {not_durable}"
                )
                for _, m in chosen
            ]
        else:
            results = [self._sync_one(index, mirror, force) for index, mirror in chosen]
        if self._on_report is not None:
            for result in results:
                finding = result.finding
                stale_only = finding is not None and finding.kind is FindingKind.STALE
                if result.action is SyncAction.FAILED or (
                    finding is not None and (report_stale or not stale_only)
                ):
                    self._on_report(result)
        return results

    def audit(self) -> list[Finding]:
        """Every mirror that is missing, stale, hand-edited or cannot hold the state.

        Raises:
            MirrorError: not bound to a replica.
        """
        findings = []
        for mirror in self._mirrors:
            state, json_type, render_error = self._read_state(mirror)
            with self._io_lock:
                observation = mirror.observe(json_type)
            finding = classify(mirror, observation, state, render_error)
            if finding is not None:
                findings.append(finding)
        return findings

    def adopt(self, path: str | os.PathLike[str]) -> list[Adoption]:
        """Make the content of mirror file ``path`` a real write of its field(s).

        Every mirror on the file is read back first; if one cannot be adopted nothing is
        written. Then each differing value is written through the field (so it propagates
        to every replica like any write) and the file's mirrors are re-synced.

        Raises:
            AdoptError: ``path`` is not a mirror, is missing, or holds a value that cannot
                be read back or does not fit the field.
            MirrorError: not bound to a replica.
        """
        replica = self._require_replica()
        target = os.path.realpath(path)
        matches = [m for m in self._mirrors if os.path.realpath(m.path) == target]
        if not matches:
            known = ", ".join(sorted({str(m.path) for m in self._mirrors})) or "none"
            raise AdoptError(f"{path} is not a mirror file (mirror files: {known})")
        plans: list[tuple[Mirror, FieldState, Any]] = []
        for mirror in matches:
            state, json_type, _ = self._read_state(mirror)
            with self._io_lock:
                observation = mirror.observe(json_type)
            if not observation.exists:
                raise AdoptError(f"{mirror.describe()}: nothing to adopt, it is missing")
            if observation.error is not None:
                raise AdoptError(f"{mirror.describe()}: cannot adopt: {observation.error}")
            plans.append((mirror, state, observation.value))
        adoptions = []
        for mirror, state, value in plans:
            if same_value(value, state.value):
                adoptions.append(Adoption(mirror, state.value, value, None))
                continue
            stamp = _write_field(replica, mirror, value)
            adoptions.append(Adoption(mirror, state.value, value, stamp))
        self.sync(fields={m.field for m in matches})
        return adoptions

    # -- internals -------------------------------------------------------------------------

    def _require_replica(self) -> Replica[Any]:
        if self._replica is None:
            raise MirrorError("this MirrorSet is not bound to a replica (call attach or bind)")
        return self._replica

    def _flush(self) -> str | None:
        """Make the state durable before mirroring it; why not, if it cannot be.

        A mirror must never show a write the store could still lose in a crash: after a
        restart the file would be ahead of the state it claims to mirror.
        """
        replica = self._require_replica()
        try:
            replica.flush(FLUSH_TIMEOUT_S)
        except StoreClosedError:
            raise
        except CrdtStateError as exc:
            return f"the state is not durable yet ({exc})"
        return None

    def _read_state(self, mirror: Mirror) -> tuple[FieldState, ValueType, str | None]:
        """The field's state, its JSON type, and why it cannot be rendered (if it cannot)."""
        replica = self._require_replica()
        with replica.doc.lock:
            field = _mirrored_field(replica, mirror)
            try:
                state = _field_state(field, mirror)
            except ValidationError as exc:
                return FieldState(None, None), field.json_type, f"the state value is invalid: {exc}"
        try:
            mirror.check_renderable(state.value, field.json_type)
        except (TypeError, ValueError) as exc:
            return state, field.json_type, str(exc)
        return state, field.json_type, None

    def _sync_one(self, index: int, mirror: Mirror, force: bool) -> SyncResult:
        state, json_type, render_error = self._read_state(mirror)
        with self._io_lock:
            last = self._written.get(index)
            if index in self._written and _older(state.stamp, last):
                # A change callback mirrored a newer write while we were reading ours.
                return SyncResult(
                    mirror,
                    SyncAction.SKIPPED,
                    None,
                    f"{mirror.describe()}: newer write {last} already mirrored",
                )
            observation = mirror.observe(json_type)
            finding = classify(mirror, observation, state, render_error)
            if render_error is not None:
                assert finding is not None
                detail = f"{mirror.describe()}: not written: {render_error}"
                return SyncResult(mirror, SyncAction.FAILED, finding, detail)
            if not force:
                reason = _reason_to_keep(observation.exists, observation, state)
                if reason is not None:
                    detail = f"{mirror.describe()}: left alone: {reason}"
                    return SyncResult(mirror, SyncAction.SKIPPED, finding, detail)
            try:
                outcome = mirror.write(state, json_type, time.time())
            except (MirrorWriteError, ValueError, TypeError) as exc:
                return SyncResult(mirror, SyncAction.FAILED, finding, f"{mirror.describe()}: {exc}")
            self._written[index] = state.stamp
        changed = outcome.content_changed or (
            finding is not None and finding.kind is FindingKind.MISSING
        )
        action = SyncAction.WRITTEN if changed else SyncAction.REFRESHED
        detail = f"{mirror.describe()}: {action} {show(state.value)}"
        if finding is not None:
            detail += f" (was {finding.kind}: {finding.reason})"
        if outcome.note is not None:
            detail += f"; {outcome.note}"
        return SyncResult(mirror, action, finding, detail)


def _older(stamp: Stamp | None, than: Stamp | None) -> bool:
    if than is None:
        return False
    return stamp is None or stamp < than


def _reason_to_keep(exists: bool, observation: Observation, state: FieldState) -> str | None:
    """Why a sync must not overwrite this file without ``force`` (``None``: go ahead)."""
    meta = observation.meta
    if exists and meta is not None and meta.stamp is not None and _older(state.stamp, meta.stamp):
        return (
            f"it records write {meta.stamp}, newer than this replica's "
            f"{state.stamp or 'unwritten field'}; sync this replica first (or force)"
        )
    if (
        exists
        and meta is None  # not written by crdtstate yet: it may predate the state
        and not state.written
        and observation.error is None  # garbage holds nothing to adopt: overwrite it
        and not same_value(observation.value, state.value)
    ):
        return (
            f"the field was never written and the file, which crdtstate never wrote, holds "
            f"{observation.shown}: adopt it "
            "(crdtstate mirror adopt FILE) or write the field (or force)"
        )
    return None


def _mirrored_field(replica: Replica[Any], mirror: Mirror) -> Field[Any]:
    """The bound field a mirror projects, checked for a kind mirrors support."""
    try:
        field = replica.field(mirror.field)
    except UnknownFieldError as exc:
        raise MirrorConfigError(f"{mirror.describe()}: {exc}") from exc
    if isinstance(field, LWWRegister):
        if mirror.map_key is not None:
            raise MirrorConfigError(
                f"{mirror.describe()}: {mirror.field!r} is a register; drop map_key"
            )
    elif isinstance(field, LWWMap):
        if mirror.map_key is None:
            raise MirrorConfigError(
                f"{mirror.describe()}: {mirror.field!r} is an LWW map; give map_key"
            )
        _map_key(field, mirror)
    else:
        raise MirrorConfigError(
            f"{mirror.describe()}: {mirror.field!r} is a {field.kind} field; mirrors project "
            "an LWWRegister or one key of an LWWMap"
        )
    return field


def _map_key(field: LWWMap[Any, Any], mirror: Mirror) -> Any:
    assert mirror.map_key is not None
    if field.key_type is int:
        try:
            return int(mirror.map_key)
        except ValueError:
            raise MirrorConfigError(
                f"{mirror.describe()}: map_key {mirror.map_key!r} is not an integer key"
            ) from None
    return mirror.map_key


def _field_state(field: Field[Any], mirror: Mirror) -> FieldState:
    """Value (JSON) and winning stamp of the mirrored register or map key (under the lock)."""
    if isinstance(field, LWWRegister):
        return FieldState(field.to_json(field.value), field.stamp)
    assert isinstance(field, LWWMap)
    key = _map_key(field, mirror)
    value = field.get(key)
    return FieldState(None if value is None else field.to_json(value), field.stamp(key))


def _write_field(replica: Replica[Any], mirror: Mirror, value: Any) -> Stamp:
    field = _mirrored_field(replica, mirror)
    try:
        if isinstance(field, LWWRegister):
            return field.set(field.from_json(value))
        assert isinstance(field, LWWMap)
        key = _map_key(field, mirror)
        if value is None:
            return field.delete(key)
        return field.set(key, field.from_json(value))
    except (ValidationError, ValueError, TypeError) as exc:
        raise AdoptError(
            f"{mirror.describe()}: {show(value)} does not fit field {mirror.field!r}: {exc}"
        ) from exc
