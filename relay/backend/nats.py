"""NATS JetStream backend: several relay processes share one log per namespace.

Layout on the JetStream server (``P`` = the configured prefix, ``T`` = a token of the
namespace, ``R`` = a token of a replica id; see :func:`token`):

* Log: one stream ``P_log_T`` per namespace, subjects ``P.log.T.>``. The **stream sequence is
  the relay sequence number**: it is gap-free (nothing is ever deleted from the middle, a
  rejected publish consumes no number), ``trim_below`` is a purge up to a sequence, and a
  namespace's limits, storage and deletion stay its own. One stream for every namespace would
  give a global sequence with gaps per namespace; nats-server 2.9 has no per-subject sequence
  to use instead. The cost is one stream per namespace (cheap into the thousands).
* Entry subjects: ``P.log.T.o.R.<op id>`` for an update with an op id, ``P.log.T.n.<relay>.<n>``
  (unique) for the rest (op id 0: repairs, plain Yjs clients). The body is a small frame —
  version, origin, appending relay process (so a follower can skip its own entries) — then
  the Yjs update; no headers are stored, because nats-py parses every stored header of every
  message it reads (that was half of ``read_after``'s time).
* Dedupe, two layers:
  1. the log stream keeps at most one message per subject and refuses a second
     (``discard_new_per_subject``, ``max_msgs_per_subject: 1``), so a resent op is refused by
     the server itself, atomically with the store, whenever it was first sent: no duplicate
     window (``Nats-Msg-Id`` forgets after two minutes) and no gap between storing an entry
     and recording its op — a relay killed mid-batch leaves nothing half-recorded. The
     refusal does not carry the original seq, so it is read back (a direct get by subject) —
     unless this process already knows it: ops it stored, resolved or read (a namespace load
     reads the tail) are remembered, bounded, so the usual resend (a replica's unacknowledged
     window after a reconnect) costs nothing; new writes never pay for dedupe;
  2. trimmed ops — purging the log forgets the per-op subjects, so ``trim_below`` first
     copies (R, op) -> seq of every entry it drops into the KV bucket (``ops.T.R.<chunk>``,
     1024 ops per key) and the highest such op per replica into the namespace record. An
     append looks there only for ops at or below that mark (in practice: resends of old ops).
* KV bucket ``P_meta`` (history 1): ``ns.T`` the namespace record (name, incarnation, the
  log stream's creation time, trimmed-op marks); ``rep.T.R`` one replica's binding and
  last report; ``snap.T`` the pointer to the current snapshot; ``ops.T.R.<chunk>`` above.
* Snapshots: stream ``P_snap`` (direct get allowed), one subject ``P.snap.T.<nonce>`` per stored
  snapshot, 256 KiB chunks; the ``snap.T`` pointer names the subject, chunk sequences, size and
  sha256 and is replaced by compare-and-set only by a snapshot with a seq at least as high, so
  two relays snapshotting at once never move it backwards. The old chunks are purged after.

Durability: JetStream acknowledges a publish once the message is written to its file store
(survives a kill -9 of nats-server or of the relay; nats-server 2.9 fsyncs every two minutes,
so a power cut can lose the last writes unless the server syncs always — 2.10+:
``jetstream { sync_interval: always }``). ``append`` returns only after every ack.

Batches: JetStream 2.9 has no atomic multi-message publish. ``append`` publishes the batch
pipelined and waits for every ack. If one fails, the call raises :class:`BackendError` and
the relay acknowledges nothing of the batch; entries that did get stored keep their seqs, and
when the replica resends them, dedupe returns those seqs — so from a replica's point of view
the batch is all-or-nothing. Only op-id-0 entries (no dedupe) can then appear twice in the
log; Yjs ignores an update it already has, so the document is unchanged.

Imports the backend interface, ``crdtstate._ids`` and nats-py (the ``nats`` extra).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import secrets
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq
from relay.backend.base import (
    AppendResult,
    BackendError,
    LogEntry,
    NamespaceMeta,
    NewEntry,
    ReplicaRecord,
    StoredSnapshot,
)

__all__ = ["FollowedEntry", "NatsBackend", "token"]

_log = logging.getLogger("relay.backend.nats")

_T = TypeVar("_T")

_FRAME_V1: Final = 1
_SUBJECT_FULL: Final = 10077  # JSStreamStoreFailedF: "maximum messages per subject exceeded"
_SNAPSHOT_CHUNK: Final = 256 * 1024
_OPS_CHUNK_BITS: Final = 10
_RECENT_OPS_MAX: Final = 100_000  # ~30 MiB at most (measured), over every namespace
_CAS_ATTEMPTS: Final = 32
# Room for the subject, headers and protocol line on top of an update's bytes.
HEADER_ROOM: Final = 1024
_TOKEN_MAX: Final = 64
_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_PREFIX_RE: Final = re.compile(r"^[A-Za-z0-9-]{1,32}$")
_NATS_ERRORS: Final = (nats.errors.Error, TimeoutError, OSError)


def token(text: str) -> str:
    """``text`` as one NATS subject token, stream-name part and KV key part.

    Why: namespaces and replica ids may hold ``.`` (a subject separator) and ``:`` (not allowed
    in KV keys), and ``a.b`` must never share subjects with ``a``'s ``a.>``. Every UTF-8 byte
    outside ``[A-Za-z0-9-]`` becomes ``_xx`` (hex), which is injective. Tokens longer than 64
    characters become ``h`` + 48 hex digits of sha256 so stream names stay short (a collision
    would need a sha256 collision).
    """
    out = "".join(
        chr(b) if chr(b) in _SAFE else f"_{b:02x}" for b in text.encode("utf-8", "surrogatepass")
    )
    if len(out) <= _TOKEN_MAX:
        return out
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:48]


def _redact(url: str) -> str:
    """The URL without credentials, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class _Space:
    """What this process knows of one namespace's storage."""

    name: Namespace
    token: str
    stream: str
    subject: str  # "P.log.T"
    created: str = ""  # the log stream's creation time: which log the caches below describe
    trim_ops: dict[str, int] = field(default_factory=dict)

    def op_subject(self, replica_token: str, op_id: int) -> str:
        return f"{self.subject}.o.{replica_token}.{op_id}"

    def op_of(self, subject: str) -> tuple[str, int] | None:
        """(replica token, op id) of an op subject of this log, else None."""
        marker = self.subject + ".o."
        if not subject.startswith(marker):
            return None
        rtok, op_text = subject[len(marker) :].rsplit(".", 1)
        return rtok, int(op_text)


@dataclass(frozen=True, slots=True)
class FollowedEntry:
    """One entry seen by :meth:`NatsBackend.follow`.

    Attributes:
        entry: the log entry.
        relay: instance id of the relay process that appended it.
        own: appended by this backend object (its relay already acked and fanned it out).
    """

    entry: LogEntry
    relay: str
    own: bool


@dataclass(slots=True)
class _Read:
    """State of one ordered read of a stream range (see :meth:`NatsBackend._read_range`)."""

    start: int
    count: int
    messages: list[tuple[int, str, dict[str, str] | None, bytes]] = field(default_factory=list)
    done: asyncio.Future[None] | None = None


class NatsBackend:
    """:class:`relay.backend.base.Backend` over NATS JetStream (see the module docstring).

    Args:
        url: NATS server URL(s), comma-separated (``nats://127.0.0.1:4222``).
        prefix: names every stream, subject and bucket of this relay deployment
            (``[A-Za-z0-9-]``), so several deployments or test runs can share a server.
        replicas: JetStream replicas of every stream (1, or 3 on a cluster).
        max_entry_bytes: the largest update the relay accepts; :meth:`open` refuses a server
            whose ``max_payload`` cannot carry it. None = do not check.
        timeout_s: how long one JetStream request may take before the call fails.
        connect_timeout_s: how long :meth:`open` tries to reach the server.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "crdtstate",
        replicas: int = 1,
        max_entry_bytes: int | None = None,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"invalid NATS prefix {prefix!r}: use 1-32 of [A-Za-z0-9-]")
        self.url = url
        self.prefix = prefix
        self.instance = secrets.token_hex(6)
        self._shown_url = ",".join(_redact(u.strip()) for u in url.split(","))
        self._replicas = replicas
        self._max_entry_bytes = max_entry_bytes
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._nc: NatsClient | None = None
        self._js: Any = None
        self._kv: Any = None
        self._spaces: dict[Namespace, _Space] = {}
        self._by_token: dict[str, _Space] = {}
        self._meta_watch: asyncio.Task[None] | None = None
        self._ack_inbox: str | None = None
        self._ack_waiting: dict[str, asyncio.Future[Msg]] = {}
        self._ack_next = 0
        self._raw_next = 0
        # (namespace token, log creation, replica token, op id) -> seq of ops this process
        # stored, resolved or read: a resend (a replica's unacknowledged window after a
        # reconnect) is answered without asking the server. One bound for all namespaces;
        # the log creation time in the key voids entries of a replaced log.
        self._recent: OrderedDict[tuple[str, str, str, int], int] = OrderedDict()
        self._disconnected_at: float | None = None
        self.meta_bucket = f"{prefix}_meta"
        self.snap_stream = f"{prefix}_snap"

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[NatsClient]:
        """Turn every NATS failure of ``what`` into a :class:`BackendError` that names the
        server and the operation; fail at once (instead of buffering) while disconnected."""
        nc = self._nc
        if nc is None:
            raise BackendError("nats backend is not open")
        if not nc.is_connected:
            raise BackendError(
                f"nats {self._shown_url}: {what}: not connected to the server (reconnecting)"
            )
        try:
            yield nc
        except BackendError:
            raise
        except _NATS_ERRORS as exc:
            raise BackendError(f"nats {self._shown_url}: {what}: {_describe(exc)}") from exc

    def _log_stream(self, tok: str) -> str:
        return f"{self.prefix}_log_{tok}"

    async def _kv_get(self, key: str) -> Any | None:
        """The KV entry at ``key`` or None (deleted counts as missing)."""
        try:
            return await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None

    async def _cas(
        self, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Read-modify-write ``key`` (JSON) with compare-and-set, retrying on a conflict.

        ``change`` gets the current value (None when missing) and returns the new value, or
        None to leave the key as it is. Returns what the key holds afterwards.
        """
        for _ in range(_CAS_ATTEMPTS):
            entry = await self._kv_get(key)
            current = None if entry is None else json.loads(entry.value)
            new = change(current)
            if new is None:
                return current
            data = json.dumps(new, separators=(",", ":")).encode()
            try:
                if entry is None:
                    await self._kv.create(key, data)
                else:
                    await self._kv.update(key, data, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return new
        raise BackendError(f"nats {self._shown_url}: {key}: too many concurrent updates")

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check JetStream and ``max_payload``, create the shared bucket and stream.

        Raises:
            BackendError: the server is unreachable within ``connect_timeout_s``, has no
                JetStream, or cannot carry the largest update; the message says which.
        """
        if self._nc is not None:
            return
        nc = NatsClient()
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=[u.strip() for u in self.url.split(",")],
                    name=f"crdtstate-relay-{self.instance}",
                    connect_timeout=max(1, int(self._connect_timeout_s)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                self._connect_timeout_s,
            )
        except _NATS_ERRORS as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            raise BackendError(
                f"cannot connect to nats {self._shown_url} within {self._connect_timeout_s} s: "
                f"{_describe(exc)}"
            ) from exc
        self._nc = nc
        try:
            await self._prepare(nc)
        except BaseException:
            self._nc = None
            with contextlib.suppress(Exception):
                await nc.close()
            raise
        _log.info(
            "nats backend open",
            extra={"url": self._shown_url, "prefix": self.prefix, "instance": self.instance},
        )

    async def _prepare(self, nc: NatsClient) -> None:
        if self._max_entry_bytes is not None:
            needed = self._max_entry_bytes + HEADER_ROOM
            if nc.max_payload < needed:
                raise BackendError(
                    f"nats {self._shown_url}: the server's max_payload is {nc.max_payload} "
                    f"bytes but the relay accepts updates of {self._max_entry_bytes} bytes "
                    f"([limits] update_bytes_max): set max_payload to at least {needed} in "
                    "nats-server.conf, or lower update_bytes_max"
                )
        js = nc.jetstream(timeout=self._timeout_s)
        self._js = js
        async with self._guard("check JetStream"):
            try:
                await js.account_info()
            except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as e:
                raise BackendError(
                    f"nats {self._shown_url}: JetStream is not enabled on the server "
                    "(start nats-server with -js)"
                ) from e
            try:
                self._kv = await js.key_value(self.meta_bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await js.create_key_value(
                    api.KeyValueConfig(
                        bucket=self.meta_bucket,
                        history=1,
                        storage=api.StorageType.FILE,
                        replicas=self._replicas,
                        direct=True,
                        description="crdtstate relay: namespaces, replicas, snapshot pointers",
                    )
                )
            await self._ensure_stream(
                api.StreamConfig(
                    name=self.snap_stream,
                    subjects=[f"{self.prefix}.snap.>"],
                    storage=api.StorageType.FILE,
                    num_replicas=self._replicas,
                    allow_direct=True,
                    description="crdtstate relay: namespace snapshots (chunks)",
                )
            )
        self._meta_watch = asyncio.create_task(self._watch_meta(), name="nats-meta-watch")

    async def _ensure_stream(self, config: api.StreamConfig) -> Any:
        """The stream's info, creating it when missing (idempotent across relays)."""
        try:
            return await self._js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            return await self._js.add_stream(config)

    async def close(self) -> None:
        """Flush and close the connection; see :meth:`Backend.close`."""
        nc = self._nc
        if nc is None:
            return
        self._nc = None
        watch = self._meta_watch
        self._meta_watch = None
        # Every step is bounded with asyncio.wait, which (unlike awaiting the task, or
        # wait_for) never waits for a task that swallows its cancellation: close must end.
        if watch is not None:
            watch.cancel()
            await asyncio.wait({watch}, timeout=self._timeout_s)
        for step in (nc.flush(), nc.close()):
            task = asyncio.ensure_future(step)
            done, _ = await asyncio.wait({task}, timeout=self._timeout_s)
            if not done:
                task.cancel()
                _log.warning("nats close step timed out", extra={"url": self._shown_url})
            elif not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if not isinstance(exc, _NATS_ERRORS):
                    _log.warning("nats close failed", extra={"error": repr(exc)})
        self._spaces.clear()
        self._by_token.clear()
        self._recent.clear()
        self._ack_inbox = None
        for fut in self._ack_waiting.values():
            fut.cancel()
        self._ack_waiting.clear()

    async def _on_error(self, exc: Exception) -> None:
        # Reconnect attempts report every failed try; the disconnect was logged once already.
        if self._disconnected_at is None:
            _log.warning("nats error", extra={"url": self._shown_url, "error": _describe(exc)})

    async def _on_disconnected(self) -> None:
        if self._nc is None:
            return
        self._disconnected_at = time.monotonic()
        _log.error(
            "nats connection lost; storage calls fail until it is back",
            extra={"url": self._shown_url},
        )

    async def _on_reconnected(self) -> None:
        down = time.monotonic() - (self._disconnected_at or time.monotonic())
        self._disconnected_at = None
        _log.warning(
            "nats connection restored", extra={"url": self._shown_url, "down_s": round(down, 3)}
        )

    async def _watch_meta(self) -> None:
        """Keep every cached namespace's trimmed-op marks current when another relay trims
        (without it, this relay could take a resend of a just-trimmed op for a new one)."""
        try:
            watcher = await self._kv.watch("ns.*")
        except _NATS_ERRORS as exc:
            _log.warning("cannot watch namespace records", extra={"error": _describe(exc)})
            return
        try:
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue
                space = self._by_token.get(entry.key[3:])
                record = json.loads(entry.value)
                if space is not None and record.get("stream_created") == space.created:
                    _merge_marks(space.trim_ops, record.get("trim_ops", {}))
        finally:
            with contextlib.suppress(*_NATS_ERRORS):
                await watcher.stop()

    # -- namespaces -------------------------------------------------------------------------

    def _make_space(self, namespace: Namespace) -> _Space:
        tok = token(namespace)
        return _Space(namespace, tok, self._log_stream(tok), f"{self.prefix}.log.{tok}")

    def _remember_op(self, space: _Space, key: tuple[str, int], seq: int) -> None:
        recent = self._recent
        recent[(space.token, space.created, *key)] = seq
        if len(recent) > _RECENT_OPS_MAX:
            recent.popitem(last=False)

    def _remember(self, space: _Space, record: dict[str, Any]) -> _Space:
        space.created = str(record.get("stream_created", ""))
        _merge_marks(space.trim_ops, record.get("trim_ops", {}))
        self._spaces[space.name] = space
        self._by_token[space.token] = space
        return space

    async def _space(self, namespace: Namespace) -> _Space:
        """The namespace's storage, known here or created by another relay process."""
        space = self._spaces.get(namespace)
        if space is not None:
            return space
        space = self._make_space(namespace)
        entry = await self._kv_get(f"ns.{space.token}")
        if entry is None:
            raise BackendError(f"namespace {namespace!r} has no storage (open_namespace first)")
        return self._remember(space, json.loads(entry.value))

    async def open_namespace(self, namespace: Namespace) -> NamespaceMeta:
        """See :meth:`Backend.open_namespace`.

        The incarnation is created once, with the log stream, and kept in the namespace
        record beside the stream's creation time: a log stream that was deleted and made
        again (history gone) is noticed and gets a new incarnation, so replicas resync.
        """
        space = self._make_space(namespace)
        async with self._guard(f"open namespace {namespace!r}"):
            info = await self._ensure_stream(
                api.StreamConfig(
                    name=space.stream,
                    subjects=[f"{space.subject}.>"],
                    storage=api.StorageType.FILE,
                    num_replicas=self._replicas,
                    # One message per op subject, a second one refused: the dedupe.
                    discard=api.DiscardPolicy.NEW,
                    discard_new_per_subject=True,
                    max_msgs_per_subject=1,
                    allow_direct=True,
                    description=f"crdtstate relay log of namespace {namespace}"[:256],
                )
            )
            config = info.config
            if not (config.discard_new_per_subject and config.max_msgs_per_subject == 1):
                raise BackendError(
                    f"stream {space.stream} does not refuse a second message per subject "
                    "(discard_new_per_subject, max_msgs_per_subject=1): it cannot dedupe"
                )
            created = info.created.isoformat() if info.created is not None else ""

            def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
                if current is not None and current.get("stream_created") == created:
                    return None
                if current is not None:
                    _log.warning(
                        "namespace log stream was replaced: new incarnation",
                        extra={"namespace": namespace, "stream": space.stream},
                    )
                return {
                    "name": namespace,
                    "incarnation": secrets.token_hex(16),
                    "created_at": time.time(),
                    "stream_created": created,
                    "trim_ops": {},
                }

            record = await self._cas(f"ns.{space.token}", change)
            assert record is not None
            cached = self._spaces.get(namespace)
            if cached is not None and cached.created != record.get("stream_created"):
                cached = None  # the log was replaced: what we knew of the old one is void
            self._remember(cached or space, record)
        state = info.state
        first = int(state.first_seq or 0)
        return NamespaceMeta(
            str(record["incarnation"]),
            Seq(int(state.last_seq or 0)),
            Seq(first if first > 1 else 0),
        )

    async def namespaces(self) -> list[Namespace]:
        """See :meth:`Backend.namespaces`."""
        async with self._guard("list namespaces"):
            records = await self._kv_values("ns.*")
        return sorted(Namespace(str(r["name"])) for r in records)

    async def _kv_values(self, pattern: str) -> list[dict[str, Any]]:
        """Current JSON values of every key matching ``pattern`` (one ordered consumer)."""
        watcher = await self._kv.watch(pattern, ignore_deletes=True)
        values: list[dict[str, Any]] = []
        try:
            while True:
                entry = await watcher.updates(timeout=self._timeout_s)
                if entry is None:
                    break
                if entry.value:
                    values.append(json.loads(entry.value))
        finally:
            with contextlib.suppress(*_NATS_ERRORS):
                await watcher.stop()
        return values

    # -- log --------------------------------------------------------------------------------

    async def append(self, namespace: Namespace, entries: Sequence[NewEntry]) -> list[AppendResult]:
        """See :meth:`Backend.append` and the module docstring (dedupe, batches)."""
        if not entries:
            return []
        async with self._guard(f"append to {namespace!r}") as nc:
            space = await self._space(namespace)
            if self._max_entry_bytes is None:
                limit = nc.max_payload - HEADER_ROOM
                for entry in entries:
                    if len(entry.update) > limit:
                        raise BackendError(
                            f"update of {len(entry.update)} bytes exceeds the nats server's "
                            f"max_payload ({nc.max_payload})"
                        )
            results: list[AppendResult | None] = [None] * len(entries)
            first_of: dict[int, int] = {}  # index of a within-batch duplicate -> first index
            seen: dict[tuple[str, int], int] = {}
            trimmed = await self._trimmed_seqs(space, entries)
            plan: list[tuple[int, str]] = []
            for index, entry in enumerate(entries):
                if entry.op_id > 0 and entry.replica_id is not None:
                    rtok = token(entry.replica_id)
                    key = (rtok, int(entry.op_id))
                    if key in seen:
                        first_of[index] = seen[key]
                        continue
                    seen[key] = index
                    old = self._recent.get((space.token, space.created, *key)) or trimmed.get(key)
                    if old is not None:
                        results[index] = AppendResult(Seq(old), True)
                        continue
                    plan.append((index, space.op_subject(rtok, int(entry.op_id))))
                else:
                    self._raw_next += 1
                    plan.append((index, f"{space.subject}.n.{self.instance}.{self._raw_next}"))
            await self._publish(space, entries, plan, results)
            for index, subject in plan:
                key_of = space.op_of(subject)
                stored = results[index]
                if key_of is not None and stored is not None:
                    self._remember_op(space, key_of, int(stored.seq))
            for index, first in first_of.items():
                original = results[first]
                assert original is not None
                results[index] = AppendResult(original.seq, True)
        return [r for r in results if r is not None]

    async def _trimmed_seqs(
        self, space: _Space, entries: Sequence[NewEntry]
    ) -> dict[tuple[str, int], int]:
        """Original seqs of ops in ``entries`` that a trim moved out of the log."""
        chunks: dict[str, set[int]] = {}
        marks = space.trim_ops
        if not marks:
            return {}
        for entry in entries:
            if entry.op_id <= 0 or entry.replica_id is None:
                continue
            rtok = token(entry.replica_id)
            if entry.op_id <= marks.get(rtok, 0):
                key = f"ops.{space.token}.{rtok}.{int(entry.op_id) >> _OPS_CHUNK_BITS}"
                chunks.setdefault(key, set()).add(int(entry.op_id))
        if not chunks:
            return {}
        keys = list(chunks)
        found = await asyncio.gather(*(self._kv_get(k) for k in keys))
        out: dict[tuple[str, int], int] = {}
        for key, stored in zip(keys, found, strict=True):
            if stored is None:
                continue
            rtok = key.split(".")[2]
            table = json.loads(stored.value)
            for op in chunks[key]:
                seq = table.get(str(op))
                if seq is not None:
                    out[(rtok, op)] = int(seq)
        return out

    async def _publish(
        self,
        space: _Space,
        entries: Sequence[NewEntry],
        plan: list[tuple[int, str]],
        results: list[AppendResult | None],
    ) -> None:
        """Publish ``plan`` pipelined, wait for every ack, fill ``results``."""
        if not plan:
            return
        futures = await self._publish_pipelined(
            [(subject, _frame(entries[index], self.instance), None) for index, subject in plan]
        )
        done, _pending = await asyncio.wait(futures, timeout=self._timeout_s + 0.0005 * len(plan))
        self._forget(futures)
        failures: list[str] = []
        stored: list[int] = []
        resent: list[tuple[int, str]] = []
        for (index, subject), fut in zip(plan, futures, strict=True):
            if fut not in done or fut.cancelled():
                failures.append("no ack in time")
                continue
            exc = fut.exception()
            if exc is not None:
                failures.append(_describe(exc))
                continue
            body = json.loads(fut.result().data)
            error = body.get("error")
            if error is None:
                duplicate = bool(body.get("duplicate", False))
                results[index] = AppendResult(Seq(int(body["seq"])), duplicate)
                if not duplicate:
                    stored.append(int(body["seq"]))
                continue
            if error.get("err_code") == _SUBJECT_FULL:
                resent.append((index, subject))  # the op's subject holds it: stored before
                continue
            failures.append(f"{error.get('code')} {error.get('description')}")
        if resent and not failures:
            originals = await self._seqs_of(space, [s for _, s in resent])
            for (index, subject), original in zip(resent, originals, strict=True):
                if original is None:
                    failures.append(f"{subject} refused as a duplicate but not found")
                else:
                    results[index] = AppendResult(Seq(original), True)
        if failures:
            _log.error(
                "append not fully acknowledged",
                extra={
                    "namespace": space.name,
                    "batch": len(plan),
                    "failed": len(failures),
                    "stored": len(stored),
                    "error": failures[0],
                },
            )
            raise BackendError(
                f"nats {self._shown_url}: append to {space.name!r}: {len(failures)} of "
                f"{len(plan)} entries not acknowledged ({failures[0]}); {len(stored)} were "
                "stored and get their seqs back when resent"
            )

    async def _publish_pipelined(
        self, messages: list[tuple[str, bytes, dict[str, str] | None]]
    ) -> list[asyncio.Future[Msg]]:
        """Publish ``messages`` in order without waiting in between; one future per message
        resolves to the reply message (for a publish: a PubAck or an error, as JSON).

        Why not ``publish_async``: nats-py 2.16 loses API errors there (its reply handler
        raises instead of failing the future), and dedupe needs exactly those errors.
        """
        nc = self._nc
        assert nc is not None
        if self._ack_inbox is None:
            inbox = nc.new_inbox()
            await nc.subscribe(f"{inbox}.*", cb=self._on_ack, pending_msgs_limit=1 << 20)
            self._ack_inbox = inbox
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Msg]] = []
        try:
            for subject, payload, headers in messages:
                self._ack_next += 1
                tag = str(self._ack_next)
                fut: asyncio.Future[Msg] = loop.create_future()
                self._ack_waiting[tag] = fut
                futures.append(fut)
                await nc.publish(
                    subject, payload, reply=f"{self._ack_inbox}.{tag}", headers=headers
                )
        except BaseException:
            self._forget(futures)
            raise
        return futures

    async def _on_ack(self, msg: Msg) -> None:
        fut = self._ack_waiting.pop(msg.subject.rsplit(".", 1)[1], None)
        if fut is None or fut.done():
            return
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            fut.set_exception(nats.errors.NoRespondersError())
        else:
            fut.set_result(msg)

    def _forget(self, futures: list[asyncio.Future[Msg]]) -> None:
        """Stop waiting for ``futures`` (answered or given up on)."""
        waiting = self._ack_waiting
        for fut in futures:
            if not fut.done():
                fut.cancel()
        if len(waiting) > 0:
            for tag in [t for t, f in waiting.items() if f.done()]:
                del waiting[tag]

    async def _seqs_of(self, space: _Space, subjects: list[str]) -> list[int | None]:
        """Seq of the message on each op subject: in the log (one pipelined direct get per
        subject), or moved out by a trim (the KV map); None where neither has it."""
        futures = await self._publish_pipelined(
            [(f"$JS.API.DIRECT.GET.{space.stream}.{s}", b"", None) for s in subjects]
        )
        try:
            replies = await asyncio.wait_for(
                asyncio.gather(*futures), self._timeout_s + 0.0005 * len(subjects)
            )
        finally:
            self._forget(futures)
        out: list[int | None] = []
        for subject, reply in zip(subjects, replies, strict=True):
            headers = reply.headers or {}
            seq = headers.get("Nats-Sequence")
            if seq is not None:
                out.append(int(seq))
                continue
            if headers.get("Status") != "404":
                raise BackendError(f"direct get of {subject}: {headers}")
            key = space.op_of(subject)
            assert key is not None
            rtok, op = key
            entry = await self._kv_get(f"ops.{space.token}.{rtok}.{op >> _OPS_CHUNK_BITS}")
            found = None if entry is None else json.loads(entry.value).get(str(op))
            out.append(None if found is None else int(found))
        return out

    async def read_after(self, namespace: Namespace, seq: Seq, limit: int) -> list[LogEntry]:
        """See :meth:`Backend.read_after`. One ephemeral consumer streams the range."""
        async with self._guard(f"read {namespace!r}"):
            space = await self._space(namespace)
            info = await self._js.stream_info(space.stream)
            last = int(info.state.last_seq or 0)
            start = max(int(seq) + 1, int(info.state.first_seq or 0), 1)
            count = min(limit, last - start + 1)
            if count <= 0:
                return []
            rows = await self._read_range(space.stream, start, count, headers_only=False)
        for sseq, subject, _headers, _data in rows:
            key = space.op_of(subject)
            if key is not None:
                self._remember_op(space, key, sseq)
        return [_unframe(Seq(sseq), data) for sseq, _subject, _headers, data in rows]

    async def _read_range(
        self, stream: str, start: int, count: int, *, headers_only: bool
    ) -> list[tuple[int, str, dict[str, str] | None, bytes]]:
        """Messages ``start .. start + count - 1`` of ``stream`` (fewer if the read stalls or
        a message was lost to a slow subscription: always a gap-free prefix).

        Why a push consumer: it streams the range with flow control in one request, where a
        get per message would cost a round trip each.
        """
        nc = self._nc
        assert nc is not None
        read = _Read(start, count, done=asyncio.get_running_loop().create_future())
        inbox = nc.new_inbox()

        async def on_msg(msg: Msg) -> None:
            reply = msg.reply
            if not reply.startswith("$JS.ACK."):
                if reply:  # flow control request: answer it or the server stops sending
                    await nc.publish(reply, b"")
                return
            tokens = reply.split(".")
            # v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
            sseq = int(tokens[5] if len(tokens) == 9 else tokens[-5])
            expected = read.start + len(read.messages)
            if sseq != expected or len(read.messages) >= read.count:
                _finish(read)
                return
            read.messages.append((sseq, msg.subject, msg.headers, msg.data))
            if len(read.messages) >= read.count:
                _finish(read)

        sub = await nc.subscribe(
            inbox,
            cb=on_msg,
            pending_msgs_limit=count + 1024,
            pending_bytes_limit=1024 * 1024 * 1024,
        )
        consumer: Any = None
        try:
            consumer = await self._js.add_consumer(
                stream,
                api.ConsumerConfig(
                    deliver_subject=inbox,
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start,
                    ack_policy=api.AckPolicy.NONE,
                    flow_control=True,
                    idle_heartbeat=2.0,
                    headers_only=headers_only or None,
                    mem_storage=True,
                    num_replicas=1,
                    inactive_threshold=30.0,
                ),
            )
            assert read.done is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(read.done), self._timeout_s + count * 0.0002)
        finally:
            with contextlib.suppress(*_NATS_ERRORS):
                await sub.unsubscribe()
            if consumer is not None:
                with contextlib.suppress(*_NATS_ERRORS):
                    await self._js.delete_consumer(stream, consumer.name)
        if not read.messages and count > 0:
            raise BackendError(
                f"reading {stream} from {start}: nothing readable (no answer in time, or the "
                "range was trimmed meanwhile)"
            )
        return read.messages

    async def follow(
        self, namespace: Namespace, after: Seq, *, heartbeat_s: float = 2.0
    ) -> AsyncGenerator[FollowedEntry, None]:
        """Every entry with seq > ``after``, in seq order and gap-free, as it is appended —
        by this relay or any other on the same JetStream. Not part of the ``Backend``
        protocol: it is what a hub needs to serve one namespace from several relays at once
        (docs/backends.md, "Scale-out").

        Raises:
            BackendError: the feed can no longer be promised gap-free (no heartbeat for three
                intervals — connection or server lost —, the range after ``after`` was
                trimmed, a message skipped). The caller follows again from the last seq it
                got, or reloads the namespace.
        """
        async with self._guard(f"follow {namespace!r}") as nc:
            space = await self._space(namespace)
            feed: asyncio.Queue[Msg] = asyncio.Queue()

            async def on_msg(msg: Msg) -> None:
                if msg.reply and not msg.reply.startswith("$JS.ACK."):
                    await nc.publish(msg.reply, b"")  # flow control
                feed.put_nowait(msg)  # heartbeats too: they prove the feed is alive

            sub = await nc.subscribe(nc.new_inbox(), cb=on_msg)
            try:
                consumer = await self._js.add_consumer(
                    space.stream,
                    api.ConsumerConfig(
                        deliver_subject=sub.subject,
                        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=int(after) + 1,
                        ack_policy=api.AckPolicy.NONE,
                        flow_control=True,
                        idle_heartbeat=heartbeat_s,
                        mem_storage=True,
                        num_replicas=1,
                        inactive_threshold=max(30.0, heartbeat_s * 10),
                    ),
                )
            except BaseException:
                with contextlib.suppress(*_NATS_ERRORS):
                    await sub.unsubscribe()
                raise
        expected = int(after) + 1
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(feed.get(), heartbeat_s * 3)
                except TimeoutError:
                    raise BackendError(
                        f"follow {namespace!r}: no heartbeat from nats {self._shown_url} "
                        f"for {heartbeat_s * 3:g} s"
                    ) from None
                if not msg.reply.startswith("$JS.ACK."):
                    continue
                tokens = msg.reply.split(".")
                sseq = int(tokens[5] if len(tokens) == 9 else tokens[-5])
                if sseq != expected:
                    raise BackendError(
                        f"follow {namespace!r}: expected seq {expected}, the log gave {sseq} "
                        "(trimmed meanwhile?)"
                    )
                expected += 1
                relay = _relay_of(msg.data) if msg.data[:1] == bytes((_FRAME_V1,)) else ""
                yield FollowedEntry(_unframe(Seq(sseq), msg.data), relay, relay == self.instance)
        finally:
            with contextlib.suppress(*_NATS_ERRORS):
                await sub.unsubscribe()
            with contextlib.suppress(*_NATS_ERRORS):
                if self._nc is not None and self._nc.is_connected:
                    await self._js.delete_consumer(space.stream, consumer.name)

    async def head(self, namespace: Namespace) -> Seq:
        """See :meth:`Backend.head`: the log stream's last sequence."""
        async with self._guard(f"head of {namespace!r}"):
            space = await self._space(namespace)
            info = await self._js.stream_info(space.stream)
        return Seq(int(info.state.last_seq or 0))

    async def lookup_op(
        self, namespace: Namespace, replica_id: ReplicaId, op_id: OpId
    ) -> Seq | None:
        """The seq an op was sequenced as, or None (used by tests and tools)."""
        async with self._guard(f"look up an op in {namespace!r}"):
            space = await self._space(namespace)
            (seq,) = await self._seqs_of(space, [space.op_subject(token(replica_id), op_id)])
        return None if seq is None else Seq(seq)

    # -- snapshots --------------------------------------------------------------------------

    async def write_snapshot(self, namespace: Namespace, snapshot: StoredSnapshot) -> None:
        """See :meth:`Backend.write_snapshot` and the module docstring (pointer + chunks)."""
        async with self._guard(f"write snapshot of {namespace!r}"):
            space = await self._space(namespace)
            key = f"snap.{space.token}"
            current = await self._kv_get(key)
            if current is not None and json.loads(current.value)["seq"] > snapshot.seq:
                return
            subject = f"{self.prefix}.snap.{space.token}.{secrets.token_hex(8)}"
            data = snapshot.update
            futures = await self._publish_pipelined(
                [
                    (subject, data[at : at + _SNAPSHOT_CHUNK], None)
                    for at in range(0, len(data), _SNAPSHOT_CHUNK)
                ]
            )
            try:
                replies = await asyncio.wait_for(asyncio.gather(*futures), self._timeout_s * 4)
            finally:
                self._forget(futures)
            acks = [json.loads(r.data) for r in replies]
            refused = [a["error"] for a in acks if "error" in a]
            if refused:
                raise BackendError(f"snapshot of {namespace!r} not stored: {refused[0]}")
            pointer = {
                "seq": int(snapshot.seq),
                "subject": subject,
                "chunks": [int(a["seq"]) for a in acks],
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "created_at": time.time(),
            }
            replaced: list[str] = []

            def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
                replaced.clear()
                if old is not None and old["seq"] > snapshot.seq:
                    replaced.append(subject)  # a newer one won meanwhile: drop ours
                    return None
                if old is not None:
                    replaced.append(str(old["subject"]))
                return pointer

            await self._cas(key, change)
        for stale in replaced:
            try:
                async with self._guard("drop a replaced snapshot"):
                    await self._js.purge_stream(self.snap_stream, subject=stale)
            except BackendError as exc:
                _log.warning("replaced snapshot not purged", extra={"error": str(exc)})

    async def read_snapshot(self, namespace: Namespace) -> StoredSnapshot | None:
        """See :meth:`Backend.read_snapshot`."""
        async with self._guard(f"read snapshot of {namespace!r}"):
            space = await self._space(namespace)
            for _ in range(3):
                entry = await self._kv_get(f"snap.{space.token}")
                if entry is None:
                    return None
                pointer = json.loads(entry.value)
                try:
                    parts = await asyncio.gather(
                        *(
                            self._js.get_msg(self.snap_stream, seq=s, direct=True)
                            for s in pointer["chunks"]
                        )
                    )
                except nats.js.errors.NotFoundError:
                    continue  # replaced while we read: read the new pointer
                data = b"".join(p.data or b"" for p in parts)
                if hashlib.sha256(data).hexdigest() != pointer["sha256"]:
                    raise BackendError(f"snapshot of {namespace!r} fails its sha256 check")
                return StoredSnapshot(Seq(int(pointer["seq"])), data)
        raise BackendError(f"snapshot of {namespace!r} keeps changing under the reader")

    async def trim_below(self, namespace: Namespace, seq: Seq) -> int:
        """See :meth:`Backend.trim_below`.

        Copies the dropped entries' ops to the dedupe map first, then purges; a crash in
        between only leaves ops recorded twice. Never purges past the last entry: JetStream
        would move the stream's next sequence number forward.
        """
        async with self._guard(f"trim {namespace!r}") as nc:
            space = await self._space(namespace)
            pointer = await self._kv_get(f"snap.{space.token}")
            if pointer is None:
                return 0
            info = await self._js.stream_info(space.stream)
            first = max(int(info.state.first_seq or 0), 1)
            last = int(info.state.last_seq or 0)
            limit = min(int(seq), int(json.loads(pointer.value)["seq"]) + 1, last + 1)
            if limit <= first:
                return 0
            await self._retire_ops(space, first, limit)
            response = await nc.request(
                f"$JS.API.STREAM.PURGE.{space.stream}",
                json.dumps({"seq": limit}).encode(),
                timeout=self._timeout_s,
            )
            body = json.loads(response.data)
            if "error" in body:
                raise BackendError(f"purge of {space.stream} refused: {body['error']}")
        return int(body.get("purged", 0))

    async def _retire_ops(self, space: _Space, first: int, limit: int) -> None:
        """Record (replica, op) -> seq of entries ``first .. limit - 1`` in the KV map."""
        rows = await self._read_range(space.stream, first, limit - first, headers_only=True)
        if len(rows) < limit - first:
            raise BackendError(f"trim of {space.name!r}: could not read the entries to drop")
        chunks: dict[str, dict[str, int]] = {}
        highest: dict[str, int] = {}
        for sseq, subject, _headers, _data in rows:
            key = space.op_of(subject)
            if key is None:
                continue
            rtok, op = key
            chunk = chunks.setdefault(f"ops.{space.token}.{rtok}.{op >> _OPS_CHUNK_BITS}", {})
            chunk[str(op)] = sseq
            highest[rtok] = max(highest.get(rtok, 0), op)

        def merge(add: dict[str, int]) -> Callable[[dict[str, Any] | None], dict[str, Any] | None]:
            def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
                if old is not None and all(k in old for k in add):
                    return None
                return {**(old or {}), **add}

            return change

        await _bounded_gather([self._cas(key, merge(add)) for key, add in chunks.items()], 16)
        if not highest:
            return

        def raise_marks(old: dict[str, Any] | None) -> dict[str, Any] | None:
            if old is None:
                raise BackendError(f"namespace {space.name!r} lost its record")
            marks = dict(old.get("trim_ops", {}))
            if all(marks.get(r, 0) >= op for r, op in highest.items()):
                return None
            _merge_marks(marks, highest)
            return {**old, "trim_ops": marks}

        await self._cas(f"ns.{space.token}", raise_marks)
        _merge_marks(space.trim_ops, highest)

    # -- replicas ---------------------------------------------------------------------------

    async def bind_replica(
        self, namespace: Namespace, replica_id: ReplicaId, public_key: bytes, now: float
    ) -> bytes:
        """See :meth:`Backend.bind_replica`; a KV create makes the first binding win."""
        async with self._guard(f"bind replica in {namespace!r}"):
            space = await self._space(namespace)

            def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
                if old is not None:
                    return None
                return {
                    "replica_id": replica_id,
                    "public_key": base64.b64encode(public_key).decode(),
                    "first_seen": now,
                    "last_seen": now,
                    "applied_seq": 0,
                    "heartbeat": "",
                }

            record = await self._cas(f"rep.{space.token}.{token(replica_id)}", change)
        assert record is not None
        return base64.b64decode(record["public_key"])

    async def record_replica(
        self,
        namespace: Namespace,
        replica_id: ReplicaId,
        applied_seq: Seq,
        heartbeat: str | None,
        now: float,
    ) -> None:
        """See :meth:`Backend.record_replica` (an unbound replica is not recorded)."""
        async with self._guard(f"record replica in {namespace!r}"):
            space = await self._space(namespace)

            def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
                if old is None:
                    return None
                new = {**old, "applied_seq": int(applied_seq), "last_seen": now}
                if heartbeat is not None:
                    new["heartbeat"] = heartbeat
                return new

            await self._cas(f"rep.{space.token}.{token(replica_id)}", change)

    async def replicas(self, namespace: Namespace) -> list[ReplicaRecord]:
        """See :meth:`Backend.replicas`."""
        async with self._guard(f"list replicas of {namespace!r}"):
            space = await self._space(namespace)
            records = await self._kv_values(f"rep.{space.token}.*")
        out = [
            ReplicaRecord(
                ReplicaId(str(r["replica_id"])),
                base64.b64decode(r["public_key"]),
                Seq(int(r["applied_seq"])),
                float(r["last_seen"]),
                str(r["heartbeat"]),
            )
            for r in records
        ]
        return sorted(out, key=lambda r: r.replica_id)


def _frame(entry: NewEntry, relay: str) -> bytes:
    """The stored message body: version, origin and appending relay, then the update.

    Why not headers: a stored header is parsed by nats-py on every read of every message
    (measured: header parsing was half of ``read_after``'s time); this prefix costs a slice.
    """
    origin = entry.origin.encode()
    tag = relay.encode()
    if len(origin) > 0xFFFF:
        raise BackendError(f"origin of {len(origin)} bytes is too long to store")
    return b"".join(
        (
            bytes((_FRAME_V1, len(origin) >> 8, len(origin) & 0xFF)),
            origin,
            bytes((len(tag),)),
            tag,
            entry.update,
        )
    )


def _unframe(seq: Seq, data: bytes) -> LogEntry:
    """Inverse of :func:`_frame`, without the relay id (only a follower needs it)."""
    if not data or data[0] != _FRAME_V1:
        raise BackendError(f"log entry {seq}: unknown format (written by a newer relay?)")
    end = 3 + ((data[1] << 8) | data[2])
    origin = data[3:end].decode()
    return LogEntry(seq, origin, data[end + 1 + data[end] :])


def _relay_of(data: bytes) -> str:
    """The appending relay's instance id in a frame checked by :func:`_unframe`."""
    end = 3 + ((data[1] << 8) | data[2])
    return data[end + 1 : end + 1 + data[end]].decode()


def _finish(read: _Read) -> None:
    if read.done is not None and not read.done.done():
        read.done.set_result(None)


def _merge_marks(into: dict[str, int], marks: dict[str, Any]) -> None:
    for rtok, op in marks.items():
        if int(op) > into.get(rtok, 0):
            into[rtok] = int(op)


async def _bounded_gather(calls: list[Awaitable[_T]], width: int) -> list[_T]:
    """Await ``calls`` with at most ``width`` in flight (KV writes of a large trim)."""
    gate = asyncio.Semaphore(width)

    async def one(call: Awaitable[_T]) -> _T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))
