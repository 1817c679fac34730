"""The pure parts of the relay's drift view: commit times to lag, tolerant heartbeat parsing,
the namespace verdict, and the drift gauges' rendering."""

from __future__ import annotations

from prometheus_client import generate_latest

from crdtstate.drift import ReplicaEntry, ReplicasView, assess
from relay.drift_view import missing_since, summarize
from relay.metrics import (
    DRIFT_REPLICA_SERIES_MAX,
    NamespaceDriftSample,
    RelayMetrics,
    ReplicaDriftSample,
)

DIGEST_A = "a" * 64
DIGEST_B = "b" * 64
VECTOR = "0101" + "05"  # one client (1) at clock 5


def test_missing_since_is_when_the_first_unapplied_seq_was_sequenced() -> None:
    commits = [(4, 100.0), (6, 110.0), (9, 120.0)]
    assert missing_since(commits, 3) == 100.0
    assert missing_since(commits, 4) == 110.0
    assert missing_since(commits, 5) == 110.0
    assert missing_since(commits, 8) == 120.0
    assert missing_since(commits, 9) is None
    assert missing_since([], 0) is None


def test_partial_heartbeat_keeps_valid_fields_and_names_the_dropped_ones() -> None:
    entry, dropped = ReplicaEntry.from_partial_heartbeat(
        "r1",
        {
            "replica_id": "someone-else",
            "applied_seq": 3,
            "outbox_len": 2,
            "recovery_s": 0.5,
            "digest": "nope",
            "state_vector": "zz",
            "instance": "abc",
        },
        connected=True,
        last_seen=10.0,
    )
    assert entry.replica_id == "r1"
    assert (entry.applied_seq, entry.outbox, entry.recovery_seconds) == (3, 2, 0.5)
    assert entry.digest is None and entry.state_vector is None
    assert dropped == ["digest", "state_vector"]


def test_partial_heartbeat_falls_back_to_the_hello_applied_seq() -> None:
    entry, dropped = ReplicaEntry.from_partial_heartbeat(
        "r1", None, connected=False, last_seen=1.0, applied_seq=7
    )
    assert entry.applied_seq == 7 and dropped == []
    entry, _ = ReplicaEntry.from_partial_heartbeat(
        "r1", {"applied_seq": "x"}, connected=False, last_seen=1.0, applied_seq=7
    )
    assert entry.applied_seq is None  # the heartbeat's own value was invalid: not guessed


def _entry(name: str, digest: str, applied: int = 5) -> ReplicaEntry:
    entry, _ = ReplicaEntry.from_partial_heartbeat(
        name,
        {
            "applied_seq": applied,
            "state_vector": VECTOR,
            "digest": digest,
            "outbox": 0,
            "recovery_seconds": 0.1,
            "clock_offset_ms": 0.0,
            "schema_version": 1,
            "started_at": 1.0,
            "sent_at": 99.0,
        },
        connected=True,
        last_seen=99.0,
    )
    return entry


def test_summary_verdict_goes_from_healthy_to_alarm() -> None:
    healthy = ReplicasView(
        namespace="ns", head_seq=5, served_at=100.0, replicas=[_entry("a", DIGEST_A)]
    )
    assert summarize(assess(healthy, 100.0))["verdict"] == "healthy"
    twins = healthy.model_copy(update={"replicas": [_entry("a", DIGEST_A), _entry("b", DIGEST_B)]})
    summary = summarize(assess(twins, 100.0))
    assert summary["verdict"] == "alarm" and summary["diverged"] == 2 and summary["alarms"] == 2
    behind = healthy.model_copy(update={"head_seq": 6})
    summary = summarize(assess(behind, 100.0))
    assert summary["verdict"] == "syncing" and summary["lagging"] == 1


def test_drift_gauges_render_only_the_last_samples_within_the_cap() -> None:
    metrics = RelayMetrics()
    replica = ReplicaDriftSample("ns", "r1", True, False, 2, 1.5, 0, None, 0.2)
    metrics.drift.set([NamespaceDriftSample("ns", 9, 1, 1, 1, 0, 0)], [replica])
    text = generate_latest(metrics.registry).decode()
    assert 'crdtstate_relay_replica_lag_seqs{namespace="ns",replica="r1"} 2.0' in text
    assert 'crdtstate_relay_namespace_head_seq{namespace="ns"} 9.0' in text
    assert "crdtstate_relay_replica_recovery_seconds{" not in text  # unknown: no sample

    many = [
        ReplicaDriftSample("ns", f"r{i}", True, False, 0, 0.0, 0, 0.0, 0.0)
        for i in range(DRIFT_REPLICA_SERIES_MAX + 5)
    ]
    metrics.drift.set([], many)
    text = generate_latest(metrics.registry).decode()
    assert text.count("crdtstate_relay_replica_lag_seqs{") == DRIFT_REPLICA_SERIES_MAX
    assert "crdtstate_relay_drift_replicas_unlisted 5.0" in text
    assert 'namespace_head_seq{namespace="ns"}' not in text  # gone namespaces leave nothing
