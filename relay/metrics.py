"""Prometheus metrics of one relay, on a registry of its own (several relays can share a
process in tests).

Counters and histograms carry no per-namespace labels: namespaces are unbounded, label sets
must not be. The drift gauges (lag, outbox, divergence per namespace and replica) are the
exception, made safe by :class:`DriftCollector`: it holds no series of its own but renders,
at each scrape, the samples it was last given (namespaces loaded in memory only, at most
:data:`DRIFT_REPLICA_SERIES_MAX` replicas), so a gone namespace or replica leaves nothing
behind.

Owns metric names. Imports prometheus-client only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "DRIFT_REPLICA_SERIES_MAX",
    "DriftCollector",
    "NamespaceDriftSample",
    "RelayMetrics",
    "ReplicaDriftSample",
]

DRIFT_REPLICA_SERIES_MAX = 2000
"""Most replicas given per-replica drift series in one scrape (the rest are counted)."""

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RelayMetrics:
    """Every metric the relay exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "crdtstate_relay_connections", "Open websocket connections.", ["kind"], registry=r
        )
        self.namespaces_loaded = Gauge(
            "crdtstate_relay_namespaces_loaded", "Namespaces held in memory.", registry=r
        )
        self.updates_sequenced = Counter(
            "crdtstate_relay_updates_sequenced", "Updates durably sequenced.", registry=r
        )
        self.update_bytes = Counter(
            "crdtstate_relay_update_bytes", "Bytes of sequenced updates.", registry=r
        )
        self.duplicates = Counter(
            "crdtstate_relay_duplicate_updates", "Resent updates acknowledged again.", registry=r
        )
        self.sent_bytes = Counter(
            "crdtstate_relay_sent_bytes", "Bytes sent to clients.", registry=r
        )
        self.rejects = Counter(
            "crdtstate_relay_rejects", "Refused frames, by reason.", ["reason"], registry=r
        )
        self.fanout_lag = Histogram(
            "crdtstate_relay_fanout_lag_seconds",
            "Time a frame waited in a send queue before it was written.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "crdtstate_relay_commit_seconds",
            "Duration of one group commit.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_batch = Histogram(
            "crdtstate_relay_commit_batch_size",
            "Updates per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
            registry=r,
        )
        self.takeovers = Counter(
            "crdtstate_relay_takeovers", "Connections replaced by a newer one.", registry=r
        )
        self.split_brain = Counter(
            "crdtstate_relay_split_brain",
            "Back-and-forth takeovers between two live instances of one replica id.",
            registry=r,
        )
        self.resyncs = Counter(
            "crdtstate_relay_resync_required",
            "Subscribers told to resync after their send queue overflowed.",
            registry=r,
        )
        self.snapshots = Counter("crdtstate_relay_snapshots", "Snapshots stored.", registry=r)
        self.evictions = Counter(
            "crdtstate_relay_namespace_evictions", "Idle namespaces unloaded.", registry=r
        )
        self.storage_failures = Counter(
            "crdtstate_relay_storage_failures", "Failed group commits.", registry=r
        )
        self.gc_full_pause = Histogram(
            "crdtstate_relay_gc_full_collection_seconds",
            "Event-loop pause of each full (generation 2) garbage collection.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.gc_frozen_objects = Gauge(
            "crdtstate_relay_gc_frozen_objects",
            "Objects frozen after start-up, which garbage collections skip.",
            registry=r,
        )
        self.drift = DriftCollector()
        r.register(self.drift)

    def reject(self, reason: str) -> None:
        """Count one refused frame."""
        self.rejects.labels(reason).inc()


@dataclass(frozen=True, slots=True)
class NamespaceDriftSample:
    """Drift of one namespace at the time of a scrape.

    Attributes:
        namespace: the namespace.
        head_seq: the last sequence number assigned.
        replicas: replicas the relay knows of.
        connected: replicas with a live connection.
        lagging: replicas behind the head (or missing updates others have).
        diverged: replicas whose digest differs from another's with the same state vector.
        alerts: alerts under the relay's default thresholds.
    """

    namespace: str
    head_seq: int
    replicas: int
    connected: int
    lagging: int
    diverged: int
    alerts: int


@dataclass(frozen=True, slots=True)
class ReplicaDriftSample:
    """Drift of one replica at the time of a scrape; ``None``: the replica did not say."""

    namespace: str
    replica: str
    connected: bool
    diverged: bool
    lag_seqs: int | None
    lag_seconds: float | None
    outbox: int | None
    recovery_seconds: float | None
    heartbeat_age_seconds: float


_NAMESPACE_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("head_seq", "crdtstate_relay_namespace_head_seq", "Last sequence number assigned."),
    ("replicas", "crdtstate_relay_namespace_replicas", "Replicas the relay knows of."),
    ("connected", "crdtstate_relay_namespace_replicas_connected", "Replicas connected now."),
    (
        "lagging",
        "crdtstate_relay_namespace_replicas_lagging",
        "Replicas behind the head or missing updates others have.",
    ),
    (
        "diverged",
        "crdtstate_relay_namespace_divergence",
        "Replicas with the same state vector as another but a different digest (a bug).",
    ),
    ("alerts", "crdtstate_relay_namespace_alerts", "Drift alerts under default thresholds."),
)

_REPLICA_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("lag_seqs", "crdtstate_relay_replica_lag_seqs", "Sequence numbers behind the head."),
    ("lag_seconds", "crdtstate_relay_replica_lag_seconds", "Seconds behind the head."),
    ("outbox", "crdtstate_relay_replica_outbox", "Local writes not acknowledged yet."),
    (
        "recovery_seconds",
        "crdtstate_relay_replica_recovery_seconds",
        "Time the replica's last start took to rebuild its state.",
    ),
    (
        "heartbeat_age_seconds",
        "crdtstate_relay_replica_heartbeat_age_seconds",
        "Seconds since the relay last heard from the replica.",
    ),
    ("connected", "crdtstate_relay_replica_connected", "1 while the replica is connected."),
    (
        "diverged",
        "crdtstate_relay_replica_diverged",
        "1 when the replica's digest differs from a replica with the same state vector.",
    ),
)


class DriftCollector(Collector):
    """Renders the drift samples of the last :meth:`set` at each scrape."""

    def __init__(self) -> None:
        self._namespaces: Sequence[NamespaceDriftSample] = ()
        self._replicas: Sequence[ReplicaDriftSample] = ()
        self._replicas_dropped = 0

    def set(
        self,
        namespaces: Sequence[NamespaceDriftSample],
        replicas: Sequence[ReplicaDriftSample],
    ) -> None:
        """Replace the samples (per-replica ones beyond the cap are only counted)."""
        self._namespaces = tuple(namespaces)
        self._replicas = tuple(replicas[:DRIFT_REPLICA_SERIES_MAX])
        self._replicas_dropped = max(0, len(replicas) - DRIFT_REPLICA_SERIES_MAX)

    def collect(self) -> Iterator[Any]:
        """The gauges, built fresh (prometheus-client calls this at each scrape)."""
        for attr, name, doc in _NAMESPACE_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["namespace"])
            for ns in self._namespaces:
                family.add_metric([ns.namespace], float(getattr(ns, attr)))
            yield family
        for attr, name, doc in _REPLICA_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["namespace", "replica"])
            for rep in self._replicas:
                value = getattr(rep, attr)
                if value is not None:
                    family.add_metric([rep.namespace, rep.replica], float(value))
            yield family
        yield GaugeMetricFamily(
            "crdtstate_relay_drift_replicas_unlisted",
            f"Replicas left out of the per-replica drift gauges (cap {DRIFT_REPLICA_SERIES_MAX}).",
            value=float(self._replicas_dropped),
        )
