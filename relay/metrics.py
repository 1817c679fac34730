"""Prometheus metrics of one relay, on a registry of its own (several relays can share a
process in tests). No per-namespace labels: namespaces are unbounded, label sets must not be.

Owns metric names. Imports prometheus-client only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RelayMetrics"]

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

    def reject(self, reason: str) -> None:
        """Count one refused frame."""
        self.rejects.labels(reason).inc()
