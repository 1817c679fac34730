"""Drift maths: heartbeats, the relay's replicas view, lag, convergence and alerts.

Owns the JSON shape the relay serves at ``GET /v1/namespaces/<ns>/replicas``
(:class:`ReplicasView`, built from :class:`Heartbeat` payloads as sent by
``Replica.heartbeat()``), the assessment of a view against :class:`Thresholds`
(:func:`assess`) and its renderings (:func:`render_table`, :func:`render_json`).

Divergence rule: two replicas with equal state vectors hold the same updates, so different
digests between them is a bug (``DIVERGED``, an alarm); different state vectors only mean
that one is behind (``LAGGING``). State vectors are compared decoded (Yrs encodes the
client entries in no fixed order).

Pure: no I/O, no clock reads (``now`` is an argument). Imports ``_ids``, pydantic and
rich (rendering builds objects, it prints nothing); never ``replica`` or the network.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from rich.table import Table
from rich.text import Text

from crdtstate._ids import validate_namespace, validate_replica_id

STATE_VECTOR_HEX_MAX = 4 << 20
"""Longest state vector accepted, in hex characters (2 MiB encoded)."""

REPLICAS_MAX = 10_000
"""Most replicas one view may list."""

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_VARUINT_BYTES_MAX = 10


# -- state vectors ---------------------------------------------------------------------------


def decode_state_vector(hex_text: str) -> dict[int, int]:
    """Decode a hex Yjs state vector into ``{client id: clock}`` (entries with clock 0 dropped).

    The encoding is lib0's: a varuint count, then (client, clock) varuint pairs.

    Raises:
        ValueError: not hex, truncated, trailing bytes, or a client listed twice.
    """
    if len(hex_text) > STATE_VECTOR_HEX_MAX:
        raise ValueError(f"state vector longer than {STATE_VECTOR_HEX_MAX} hex characters")
    try:
        data = bytes.fromhex(hex_text)
    except ValueError:
        raise ValueError("state vector is not hex") from None
    pos = 0

    def varuint() -> int:
        nonlocal pos
        value = shift = 0
        for _ in range(_VARUINT_BYTES_MAX):
            if pos >= len(data):
                raise ValueError("state vector is truncated")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise ValueError("state vector holds an overlong number")

    count = varuint()
    if count > len(data):
        raise ValueError(f"state vector claims {count} entries in {len(data)} bytes")
    clocks: dict[int, int] = {}
    for _ in range(count):
        client, clock = varuint(), varuint()
        if client in clocks:
            raise ValueError(f"state vector lists client {client} twice")
        clocks[client] = clock
    if pos != len(data):
        raise ValueError(f"state vector has {len(data) - pos} trailing bytes")
    return {client: clock for client, clock in clocks.items() if clock}


def _join(vectors: list[dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for vector in vectors:
        for client, clock in vector.items():
            if clock > out.get(client, 0):
                out[client] = clock
    return out


# -- payloads --------------------------------------------------------------------------------

_PROTOCOL_ALIASES = {"outbox_len": "outbox", "recovery_s": "recovery_seconds"}


def _accept_protocol_names(data: Any) -> Any:
    """Accept the names of docs/protocol.md's heartbeat example beside Replica.heartbeat()'s."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for alias, name in _PROTOCOL_ALIASES.items():
        if alias in out and name not in out:
            out[name] = out.pop(alias)
    offset_s = out.get("clock_offset_s")
    if (
        "clock_offset_ms" not in out
        and isinstance(offset_s, int | float)
        and not isinstance(offset_s, bool)
    ):
        out["clock_offset_ms"] = offset_s * 1000.0
    return out


def _check_state_vector(value: str) -> str:
    decode_state_vector(value)
    return value.lower()


def _check_digest(value: str) -> str:
    if not _DIGEST_RE.match(value):
        raise ValueError("digest must be 64 lowercase hex characters (sha256)")
    return value


_MODEL_CONFIG = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False)


class Heartbeat(BaseModel):
    """A replica's heartbeat as ``Replica.heartbeat()`` builds it.

    Attributes:
        replica_id: the replica.
        applied_seq: highest relay sequence number it applied.
        state_vector: hex of its encoded Yjs state vector.
        digest: sha256 (hex) of the canonical JSON of its materialized state.
        outbox: local writes not yet acknowledged by the relay.
        recovery_seconds: how long its last start took to rebuild state.
        clock_offset_ms: how far its logical clock runs ahead of its physical clock.
        schema_version: version of the schema it declares.
        started_at: process start (seconds since the epoch).
        sent_at: when the heartbeat was built (seconds since the epoch, replica's clock).
    """

    model_config = _MODEL_CONFIG

    replica_id: str
    applied_seq: int = Field(ge=0)
    state_vector: str
    digest: str
    outbox: int = Field(ge=0)
    recovery_seconds: float = Field(ge=0)
    clock_offset_ms: float
    schema_version: int = Field(ge=0)
    started_at: float
    sent_at: float

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        return _accept_protocol_names(data)

    @field_validator("replica_id")
    @classmethod
    def _replica(cls, value: str) -> str:
        return validate_replica_id(value)

    @field_validator("state_vector")
    @classmethod
    def _vector(cls, value: str) -> str:
        return _check_state_vector(value)

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        return _check_digest(value)


_HEARTBEAT_FIELDS = frozenset(Heartbeat.model_fields) - {"replica_id"}
"""What a heartbeat may set in a :class:`ReplicaEntry` (the relay sets the rest)."""


class ReplicaEntry(BaseModel):
    """One replica in the relay's view: its latest heartbeat, plus what the relay knows.

    Heartbeat fields are ``None`` until the replica's first heartbeat.

    Attributes:
        connected: the replica has a live connection to the relay.
        last_seen: last time the relay heard from it (relay clock, seconds since the epoch).
        missing_since: when the relay sequenced ``applied_seq + 1``, the oldest update this
            replica lacks; optional, it makes lag in seconds exact (otherwise ``head_time``
            gives a lower bound).
    """

    model_config = _MODEL_CONFIG

    replica_id: str
    connected: bool
    last_seen: float
    missing_since: float | None = None
    applied_seq: int | None = Field(default=None, ge=0)
    state_vector: str | None = None
    digest: str | None = None
    outbox: int | None = Field(default=None, ge=0)
    recovery_seconds: float | None = Field(default=None, ge=0)
    clock_offset_ms: float | None = None
    schema_version: int | None = Field(default=None, ge=0)
    started_at: float | None = None
    sent_at: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        return _accept_protocol_names(data)

    @field_validator("replica_id")
    @classmethod
    def _replica(cls, value: str) -> str:
        return validate_replica_id(value)

    @field_validator("state_vector")
    @classmethod
    def _vector(cls, value: str | None) -> str | None:
        return None if value is None else _check_state_vector(value)

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        return None if value is None else _check_digest(value)

    @classmethod
    def from_heartbeat(
        cls,
        heartbeat: Heartbeat | Mapping[str, Any],
        *,
        connected: bool,
        last_seen: float,
        missing_since: float | None = None,
    ) -> Self:
        """The entry a relay serves for a replica's latest heartbeat.

        Raises:
            pydantic.ValidationError: the heartbeat is malformed.
        """
        hb = heartbeat if isinstance(heartbeat, Heartbeat) else Heartbeat.model_validate(heartbeat)
        return cls.model_validate(
            {
                **hb.model_dump(),
                "connected": connected,
                "last_seen": last_seen,
                "missing_since": missing_since,
            }
        )

    @classmethod
    def from_partial_heartbeat(
        cls,
        replica_id: str,
        heartbeat: Mapping[str, Any] | None,
        *,
        connected: bool,
        last_seen: float,
        missing_since: float | None = None,
        applied_seq: int | None = None,
    ) -> tuple[Self, list[str]]:
        """The entry for whatever a replica sent, keeping every field that is valid.

        A relay stores any JSON object a replica sends as its heartbeat (older clients,
        plain tools, a buggy build): one bad field must not hide the replica or the rest
        of what it said. The replica id is the relay's (the connection's), never the
        payload's, so a heartbeat cannot speak for another replica.

        Args:
            replica_id: the replica, as the relay knows it.
            heartbeat: the heartbeat payload, ``None`` before the first.
            connected: the replica has a live connection.
            last_seen: last time the relay heard from it (relay clock).
            missing_since: see :class:`ReplicaEntry`.
            applied_seq: applied seq to use when the heartbeat gives none (from a hello).

        Returns:
            The entry, and the names of the heartbeat fields dropped as invalid.

        Raises:
            pydantic.ValidationError: ``replica_id`` or ``last_seen`` themselves are invalid.
        """
        data: dict[str, Any] = _accept_protocol_names(dict(heartbeat or {}))
        data = {name: value for name, value in data.items() if name in _HEARTBEAT_FIELDS}
        if "applied_seq" not in data and applied_seq is not None:
            data["applied_seq"] = applied_seq
        fixed = {
            "replica_id": replica_id,
            "connected": connected,
            "last_seen": last_seen,
            "missing_since": missing_since,
        }
        dropped: list[str] = []
        while True:
            try:
                return cls.model_validate({**data, **fixed}), dropped
            except PydanticValidationError as exc:
                bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} & set(data)
                if not bad:
                    raise
                for name in sorted(bad):
                    del data[name]
                    dropped.append(name)


class ReplicasView(BaseModel):
    """The relay's view of one namespace (``GET /v1/namespaces/<ns>/replicas``).

    Attributes:
        namespace: the namespace.
        head_seq: the last sequence number the relay assigned (0: nothing yet).
        head_time: when it assigned it (relay clock), ``None`` if unknown.
        served_at: the relay's clock when it built the view; when given, ages and lags
            are measured on the relay's clock, so the reader's clock skew does not matter.
        replicas: every replica the relay knows of.
    """

    model_config = _MODEL_CONFIG

    namespace: str
    head_seq: int = Field(ge=0)
    head_time: float | None = None
    served_at: float | None = None
    replicas: list[ReplicaEntry] = Field(default_factory=list, max_length=REPLICAS_MAX)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return validate_namespace(value)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[str] = set()
        for entry in self.replicas:
            if entry.replica_id in seen:
                raise ValueError(f"replica {entry.replica_id!r} is listed twice")
            seen.add(entry.replica_id)
        return self


# -- assessment ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Alert limits (defaults from background/001: lag 5 min, recovery 30 s).

    Attributes:
        lag_s_max: a replica further behind the head than this alerts.
        recovery_s_max: a restart that took longer than this alerts.
        outbox_len_max: more unacknowledged local writes than this alerts (``None``: off).
        silence_s_max: no heartbeat for longer than this alerts (``None``: ``lag_s_max``).
    """

    lag_s_max: float = 300.0
    recovery_s_max: float = 30.0
    outbox_len_max: int | None = None
    silence_s_max: float | None = None

    def __post_init__(self) -> None:
        for name in ("lag_s_max", "recovery_s_max", "silence_s_max"):
            value = getattr(self, name)
            if value is None and name == "silence_s_max":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
            if value == float("inf"):
                raise ValueError(f"{name} must be finite")
        limit = self.outbox_len_max
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"outbox_len_max must be an integer >= 0, got {limit!r}")

    @property
    def silence_limit_s(self) -> float:
        """The effective heartbeat silence limit."""
        return self.lag_s_max if self.silence_s_max is None else self.silence_s_max


class ReplicaStatus(enum.StrEnum):
    """Where a replica stands relative to the others."""

    CONVERGED = "converged"
    """At the head, nothing pending, same state vector as every replica at the head."""
    LAGGING = "lagging"
    """Behind the head (or missing updates replicas at the head have)."""
    PENDING = "pending"
    """Caught up, with local writes the relay has not acknowledged yet."""
    DIVERGED = "diverged"
    """Same state vector as another replica, different digest: a bug."""
    UNKNOWN = "unknown"
    """No heartbeat yet."""


class Severity(enum.StrEnum):
    """How bad an alert is."""

    ALERT = "alert"
    """A threshold was crossed: operations should look."""
    ALARM = "alarm"
    """An invariant broke: a bug to report."""


class AlertCode(enum.StrEnum):
    """Why a replica alerts."""

    DIVERGED = "diverged"
    LAG = "lag"
    SILENT = "silent"
    RECOVERY = "recovery"
    OUTBOX = "outbox"
    AHEAD = "ahead"


class Alert(BaseModel):
    """One alert on one replica, with its reason for a person."""

    model_config = ConfigDict(frozen=True)

    code: AlertCode
    severity: Severity
    message: str


class ReplicaDrift(BaseModel):
    """The assessment of one replica. Numbers are ``None`` where the replica did not say."""

    model_config = ConfigDict(frozen=True)

    replica_id: str
    connected: bool
    status: ReplicaStatus
    converged: bool
    applied_seq: int | None
    lag_seqs: int | None
    lag_seconds: float | None
    outbox: int | None
    recovery_seconds: float | None
    clock_offset_ms: float | None
    schema_version: int | None
    digest: str | None
    last_seen_age_s: float
    alerts: list[Alert]


class DriftReport(BaseModel):
    """The assessment of a namespace: one :class:`ReplicaDrift` per replica."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    head_seq: int
    assessed_at: float
    thresholds: dict[str, float | int | None]
    replicas: list[ReplicaDrift]

    @property
    def alerts(self) -> list[tuple[str, Alert]]:
        """Every alert as ``(replica id, alert)``."""
        return [(r.replica_id, a) for r in self.replicas for a in r.alerts]

    @property
    def healthy(self) -> bool:
        """No alert on any replica."""
        return not self.alerts

    @property
    def exit_code(self) -> int:
        """0 when healthy, 1 on any alert (the ``crdtstate drift`` convention)."""
        return 0 if self.healthy else 1


def assess(view: ReplicasView, now: float, thresholds: Thresholds | None = None) -> DriftReport:
    """Lag, convergence and alerts of every replica in ``view``.

    Args:
        view: the relay's view of a namespace.
        now: the current time (seconds since the epoch); ``view.served_at`` is used
            instead when the relay gave it.
        thresholds: alert limits (defaults: :class:`Thresholds`).

    Returns:
        The report, replicas in the view's order.
    """
    limits = thresholds or Thresholds()
    clock = view.served_at if view.served_at is not None else now
    vectors = {
        e.replica_id: decode_state_vector(e.state_vector)
        for e in view.replicas
        if e.state_vector is not None
    }
    twins = _divergent_twins(view.replicas, vectors)
    at_head = [
        vectors[e.replica_id]
        for e in view.replicas
        if e.replica_id in vectors
        and e.applied_seq is not None
        and e.applied_seq >= view.head_seq
        and e.outbox == 0
    ]
    reference = _join(at_head) if at_head else None
    replicas = [
        _assess_one(e, view, clock, limits, vectors.get(e.replica_id), reference, twins)
        for e in view.replicas
    ]
    return DriftReport(
        namespace=view.namespace,
        head_seq=view.head_seq,
        assessed_at=clock,
        thresholds=asdict(limits),
        replicas=replicas,
    )


def _divergent_twins(
    entries: list[ReplicaEntry], vectors: dict[str, dict[int, int]]
) -> dict[str, list[ReplicaEntry]]:
    """For each replica sharing its state vector with another of a different digest: them."""
    groups: dict[frozenset[tuple[int, int]], list[ReplicaEntry]] = {}
    for entry in entries:
        if entry.replica_id in vectors and entry.digest is not None:
            key = frozenset(vectors[entry.replica_id].items())
            groups.setdefault(key, []).append(entry)
    twins: dict[str, list[ReplicaEntry]] = {}
    for group in groups.values():
        if len({e.digest for e in group}) > 1:
            for entry in group:
                twins[entry.replica_id] = [
                    e for e in group if e is not entry and e.digest != entry.digest
                ]
    return twins


def _assess_one(
    entry: ReplicaEntry,
    view: ReplicasView,
    clock: float,
    limits: Thresholds,
    vector: dict[int, int] | None,
    reference: dict[int, int] | None,
    twins: dict[str, list[ReplicaEntry]],
) -> ReplicaDrift:
    alerts: list[Alert] = []
    age = max(0.0, clock - entry.last_seen)
    lag_seqs = None if entry.applied_seq is None else max(0, view.head_seq - entry.applied_seq)
    lag_s: float | None = None
    if lag_seqs == 0:
        lag_s = 0.0
    elif lag_seqs is not None:
        since = next(
            t for t in (entry.missing_since, view.head_time, entry.last_seen) if t is not None
        )
        lag_s = max(0.0, clock - since)

    if entry.replica_id in twins:
        mine = entry.digest or ""
        others = ", ".join(
            f"{e.replica_id} ({(e.digest or '')[:12]})" for e in twins[entry.replica_id]
        )
        alerts.append(
            Alert(
                code=AlertCode.DIVERGED,
                severity=Severity.ALARM,
                message=(
                    f"same state vector as {others} but digest {mine[:12]}: the same updates "
                    "gave different states (a convergence bug; report it)"
                ),
            )
        )
    if entry.applied_seq is not None and entry.applied_seq > view.head_seq:
        alerts.append(
            Alert(
                code=AlertCode.AHEAD,
                severity=Severity.ALARM,
                message=(
                    f"applied seq {entry.applied_seq} is beyond the relay's head {view.head_seq}: "
                    "the relay lost sequenced updates, or this replica synced with another relay"
                ),
            )
        )
    if lag_s is not None and lag_seqs and lag_s > limits.lag_s_max:
        alerts.append(
            Alert(
                code=AlertCode.LAG,
                severity=Severity.ALERT,
                message=(
                    f"{lag_seqs} update(s) behind head {view.head_seq} for "
                    f"{format_seconds(lag_s)} (max {format_seconds(limits.lag_s_max)})"
                ),
            )
        )
    if age > limits.silence_limit_s:
        state = "connected" if entry.connected else "disconnected"
        alerts.append(
            Alert(
                code=AlertCode.SILENT,
                severity=Severity.ALERT,
                message=(
                    f"not heard from for {format_seconds(age)} ({state}; max "
                    f"{format_seconds(limits.silence_limit_s)})"
                ),
            )
        )
    if entry.recovery_seconds is not None and entry.recovery_seconds > limits.recovery_s_max:
        alerts.append(
            Alert(
                code=AlertCode.RECOVERY,
                severity=Severity.ALERT,
                message=(
                    f"last start took {format_seconds(entry.recovery_seconds)} to recover "
                    f"(max {format_seconds(limits.recovery_s_max)})"
                ),
            )
        )
    if (
        limits.outbox_len_max is not None
        and entry.outbox is not None
        and entry.outbox > limits.outbox_len_max
    ):
        alerts.append(
            Alert(
                code=AlertCode.OUTBOX,
                severity=Severity.ALERT,
                message=(
                    f"{entry.outbox} local write(s) not acknowledged by the relay "
                    f"(max {limits.outbox_len_max})"
                ),
            )
        )

    if vector is None or entry.digest is None or lag_seqs is None:
        status = ReplicaStatus.UNKNOWN
    elif entry.replica_id in twins:
        status = ReplicaStatus.DIVERGED
    elif lag_seqs > 0 or (reference is not None and _lacks(vector, reference)):
        status = ReplicaStatus.LAGGING
    elif entry.outbox:
        status = ReplicaStatus.PENDING
    elif reference is not None and vector == reference:
        status = ReplicaStatus.CONVERGED
    else:
        status = ReplicaStatus.LAGGING
    return ReplicaDrift(
        replica_id=entry.replica_id,
        connected=entry.connected,
        status=status,
        converged=status is ReplicaStatus.CONVERGED,
        applied_seq=entry.applied_seq,
        lag_seqs=lag_seqs,
        lag_seconds=lag_s,
        outbox=entry.outbox,
        recovery_seconds=entry.recovery_seconds,
        clock_offset_ms=entry.clock_offset_ms,
        schema_version=entry.schema_version,
        digest=entry.digest,
        last_seen_age_s=age,
        alerts=alerts,
    )


def _lacks(vector: dict[int, int], reference: dict[int, int]) -> bool:
    """Whether ``vector`` misses updates that ``reference`` holds."""
    return any(vector.get(client, 0) < clock for client, clock in reference.items())


# -- rendering -------------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    """A duration for people: ``0.42 s``, ``12 s``, ``5 min 3 s``, ``2 h 10 min``, ``3 d 4 h``."""
    if seconds < 10:
        return f"{seconds:.2f} s".replace(".00 s", " s")
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


_STATUS_STYLE = {
    ReplicaStatus.CONVERGED: "green",
    ReplicaStatus.LAGGING: "yellow",
    ReplicaStatus.PENDING: "cyan",
    ReplicaStatus.DIVERGED: "bold red",
    ReplicaStatus.UNKNOWN: "dim",
}


def _cell(value: Any, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def render_table(report: DriftReport) -> Table:
    """A rich table of the report: one row per replica, alerts spelled out."""
    verdict = "healthy" if report.healthy else f"{len(report.alerts)} alert(s)"
    table = Table(
        title=f"namespace {report.namespace} · head seq {report.head_seq} · {verdict}",
        title_justify="left",
    )
    for name, justify in (
        ("replica", "left"),
        ("conn", "center"),
        ("status", "left"),
        ("applied", "right"),
        ("lag seqs", "right"),
        ("lag", "right"),
        ("outbox", "right"),
        ("recovery", "right"),
        ("clock ahead", "right"),
        ("digest", "left"),
        ("seen", "right"),
        ("alerts", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in report.replicas:
        alerts = Text("\n".join(f"{a.code}: {a.message}" for a in r.alerts) or "-")
        if any(a.severity is Severity.ALARM for a in r.alerts):
            alerts.stylize("bold red")
        elif r.alerts:
            alerts.stylize("red")
        table.add_row(
            r.replica_id,
            "yes" if r.connected else "no",
            Text(str(r.status), style=_STATUS_STYLE[r.status]),
            _cell(r.applied_seq),
            _cell(r.lag_seqs),
            "-" if r.lag_seconds is None else format_seconds(r.lag_seconds),
            _cell(r.outbox),
            "-" if r.recovery_seconds is None else format_seconds(r.recovery_seconds),
            "-" if r.clock_offset_ms is None else f"{r.clock_offset_ms:g} ms",
            "-" if r.digest is None else r.digest[:12],
            format_seconds(r.last_seen_age_s) + " ago",
            alerts,
        )
    return table


def render_json(report: DriftReport) -> str:
    """The report as JSON (with ``healthy`` and ``exit_code``), for scripts and CI."""
    data = report.model_dump(mode="json")
    data["healthy"] = report.healthy
    data["exit_code"] = report.exit_code
    return json.dumps(data, indent=2, sort_keys=False)
