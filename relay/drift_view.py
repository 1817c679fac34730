"""The relay's view of a namespace's replicas, built from what it holds in memory and on disk.

A replica's latest heartbeat is kept by the live namespace (``LiveNamespace.heartbeats``)
and persisted by the backend (``Backend.record_replica``), so replicas of a namespace that
is not loaded (evicted, or a relay restarted since) are still served from storage. Lag in
seconds comes from ``LiveNamespace.commit_times`` (when each commit was sequenced); for a
namespace not in memory it is left to :func:`crdtstate.drift.assess`'s fallback (the
replica's last heartbeat), a lower bound.

The JSON shape and the maths are :mod:`crdtstate.drift`'s; this module only gathers. Imports
the hub and backend types and ``crdtstate.drift``; no aiohttp.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from crdtstate._ids import Namespace, ReplicaId
from crdtstate.drift import (
    REPLICAS_MAX,
    DriftReport,
    ReplicaEntry,
    ReplicaStatus,
    ReplicasView,
    Severity,
    assess,
)
from relay.backend.base import Backend, BackendError, ReplicaRecord
from relay.hub import Hub, LiveNamespace
from relay.metrics import NamespaceDriftSample, ReplicaDriftSample

__all__ = ["Gathered", "drift_samples", "gather", "missing_since", "summarize"]

_log = logging.getLogger("relay.drift_view")

_RECEIVED_AT: Final = "received_at"
"""Key the hub adds to a heartbeat kept in memory: when the relay received it."""


@dataclass(frozen=True, slots=True)
class Gathered:
    """A namespace's replicas view plus what the relay knows beside it.

    Attributes:
        view: the view :func:`crdtstate.drift.assess` reads.
        loaded: the namespace is held in memory (its replicas can be connected).
        connections: open websocket connections to the namespace (replicas and Yjs clients).
        dropped: per replica, heartbeat fields ignored as invalid.
    """

    view: ReplicasView
    loaded: bool
    connections: int
    dropped: dict[str, list[str]]


def missing_since(commit_times: Iterable[tuple[int, float]], applied_seq: int) -> float | None:
    """When the relay sequenced ``applied_seq + 1``, the oldest update a replica lacks.

    ``commit_times`` holds ``(last seq of a commit, wall time)`` in seq order, oldest first;
    its first entry may stand for everything sequenced before the namespace was loaded
    (or before older entries were dropped), so the answer is then a lower bound of the lag.

    Returns:
        The time, or ``None`` when the replica lacks nothing the relay timed.
    """
    for seq, at in commit_times:
        if seq > applied_seq:
            return at
    return None


def _parse_stored(record: ReplicaRecord) -> dict[str, Any] | None:
    if not record.heartbeat:
        return None
    try:
        data = json.loads(record.heartbeat)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _seen(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _entries(
    live: LiveNamespace | None, records: list[ReplicaRecord]
) -> tuple[list[ReplicaEntry], dict[str, list[str]]]:
    stored = {record.replica_id: record for record in records}
    memory: Mapping[ReplicaId, dict[str, Any]] = live.heartbeats if live is not None else {}
    ids = sorted(set(stored) | set(memory))[:REPLICAS_MAX]
    entries: list[ReplicaEntry] = []
    dropped: dict[str, list[str]] = {}
    for replica_id in ids:
        record = stored.get(replica_id)
        beat = memory.get(replica_id)
        seen = [_seen(beat.get(_RECEIVED_AT)) if beat is not None else None]
        if record is not None:
            seen.append(record.last_seen)
            if beat is None:
                beat = _parse_stored(record)
        times = [t for t in seen if t is not None]
        applied = beat.get("applied_seq") if beat is not None else None
        if not isinstance(applied, int) or isinstance(applied, bool):
            applied = int(record.applied_seq) if record is not None else None
        since = (
            missing_since(live.commit_times, applied)
            if live is not None and applied is not None
            else None
        )
        try:
            entry, bad = ReplicaEntry.from_partial_heartbeat(
                replica_id,
                beat,
                connected=live is not None and replica_id in live.replicas_live,
                last_seen=max(times) if times else 0.0,
                missing_since=since,
                applied_seq=int(record.applied_seq) if record is not None else None,
            )
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            _log.warning(
                "replica left out of the view", extra={"replica": replica_id, "error": str(exc)}
            )
            continue
        entries.append(entry)
        if bad:
            dropped[replica_id] = bad
    return entries, dropped


async def gather(
    hub: Hub, backend: Backend, namespace: Namespace, now: float, *, stored: bool = False
) -> Gathered | None:
    """The replicas view of ``namespace`` as of ``now`` (relay clock); ``None`` if unknown.

    Never loads the namespace: a view must not evict a namespace in use or create one.

    Args:
        hub: the relay's live namespaces.
        backend: its storage.
        namespace: the namespace.
        now: the relay's clock.
        stored: the caller knows the namespace has storage (skips asking the backend).

    Raises:
        BackendError: the storage cannot be read.
    """
    live = hub.namespaces.get(namespace)
    if live is None and not stored and namespace not in await backend.namespaces():
        return None
    records = await backend.replicas(namespace)
    entries, dropped = _entries(live, records)
    if live is not None:
        head = int(live.head)
        head_time = live.commit_times[-1][1] if live.commit_times else None
        connections = len(live.peers)
    else:
        head = int(await backend.head(namespace))
        head_time = None
        connections = 0
    view = ReplicasView(
        namespace=namespace,
        head_seq=head,
        head_time=head_time,
        served_at=now,
        replicas=entries,
    )
    return Gathered(view, live is not None, connections, dropped)


def summarize(report: DriftReport) -> dict[str, Any]:
    """Counts for a namespace at a glance: replicas by status, alerts and alarms."""
    statuses = [r.status for r in report.replicas]
    alerts = [a for _, a in report.alerts]
    diverged = statuses.count(ReplicaStatus.DIVERGED)
    alarms = sum(1 for a in alerts if a.severity is Severity.ALARM)
    if diverged or alarms:
        verdict = "alarm"
    elif alerts:
        verdict = "alert"
    elif any(s is not ReplicaStatus.CONVERGED for s in statuses):
        verdict = "syncing"
    else:
        verdict = "healthy"
    return {
        "verdict": verdict,
        "healthy": report.healthy,
        "replicas": len(statuses),
        "connected": sum(1 for r in report.replicas if r.connected),
        "converged": statuses.count(ReplicaStatus.CONVERGED),
        "lagging": statuses.count(ReplicaStatus.LAGGING),
        "pending": statuses.count(ReplicaStatus.PENDING),
        "diverged": diverged,
        "unknown": statuses.count(ReplicaStatus.UNKNOWN),
        "alerts": len(alerts),
        "alarms": alarms,
    }


async def drift_samples(
    hub: Hub, backend: Backend, now: float
) -> tuple[list[NamespaceDriftSample], list[ReplicaDriftSample]]:
    """Drift of every namespace loaded in memory, for the ``/metrics`` gauges.

    Only loaded namespaces: they are bounded by ``namespaces_in_memory_max`` and hold every
    connected replica; the JSON views serve the others. A namespace whose storage cannot
    be read is left out of this scrape (and logged).
    """
    namespaces: list[NamespaceDriftSample] = []
    replicas: list[ReplicaDriftSample] = []
    for name in sorted(hub.namespaces):
        try:
            gathered = await gather(hub, backend, name, now)
        except BackendError as exc:
            _log.warning("drift metrics skipped", extra={"namespace": name, "error": str(exc)})
            continue
        if gathered is None:
            continue
        report = assess(gathered.view, now)
        counts = summarize(report)
        namespaces.append(
            NamespaceDriftSample(
                namespace=name,
                head_seq=report.head_seq,
                replicas=counts["replicas"],
                connected=counts["connected"],
                lagging=counts["lagging"],
                diverged=counts["diverged"],
                alerts=counts["alerts"],
            )
        )
        replicas.extend(
            ReplicaDriftSample(
                namespace=name,
                replica=r.replica_id,
                connected=r.connected,
                diverged=r.status is ReplicaStatus.DIVERGED,
                lag_seqs=r.lag_seqs,
                lag_seconds=r.lag_seconds,
                outbox=r.outbox,
                recovery_seconds=r.recovery_seconds,
                heartbeat_age_seconds=r.last_seen_age_s,
            )
            for r in report.replicas
        )
    return namespaces, replicas
