"""Drift maths and rendering, on heartbeats of real replicas and on hand-made views."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map
from pydantic import ValidationError
from rich.console import Console

from crdtstate import LWWRegister, PNCounter, Replica, Schema
from crdtstate.drift import (
    AlertCode,
    DriftReport,
    Heartbeat,
    ReplicaEntry,
    ReplicaStatus,
    ReplicasView,
    Severity,
    Thresholds,
    assess,
    decode_state_vector,
    format_seconds,
    render_json,
    render_table,
)

NOW = 1_800_000_000.0


class Agent(Schema):
    killswitch = LWWRegister(bool, default=False)
    karma = PNCounter()


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[Replica[Agent]]]:
    """Three replicas (executor, supervisor, dashboard) that exchanged every update."""
    names = ["executor", "supervisor", "dashboard"]
    replicas = [Replica.open(tmp_path / n, "agent", Agent, replica_id=n) for n in names]
    try:
        replicas[0].state.killswitch.set(True)
        replicas[1].state.karma.inc(3)
        for a in replicas:
            for b in replicas:
                if a is not b:
                    b.apply_update(a.export_update(b.state_vector()))
        yield replicas
    finally:
        for r in replicas:
            r.close()


def entry(replica: Replica[Agent], **changes: Any) -> ReplicaEntry:
    beat = {**replica.heartbeat(), **changes.pop("heartbeat", {})}
    return ReplicaEntry.from_heartbeat(
        beat,
        connected=changes.pop("connected", True),
        last_seen=changes.pop("last_seen", NOW - 1),
        missing_since=changes.pop("missing_since", None),
    )


def view(*entries: ReplicaEntry, head_seq: int = 0, **extra: Any) -> ReplicasView:
    return ReplicasView(namespace="agent", head_seq=head_seq, replicas=list(entries), **extra)


def by_id(report: DriftReport) -> dict[str, Any]:
    return {r.replica_id: r for r in report.replicas}


# -- state vectors -------------------------------------------------------------------------


def test_state_vectors_compare_equal_whatever_the_entry_order() -> None:
    a: Doc[Any] = Doc(client_id=5)
    b: Doc[Any] = Doc(client_id=300)
    a.get("m", type=Map)["x"] = 1
    b.get("m", type=Map)["y"] = 2
    a.apply_update(b.get_update())
    b.apply_update(a.get_update())

    assert decode_state_vector(a.get_state().hex()) == {5: 1, 300: 1}
    assert decode_state_vector(b.get_state().hex()) == {5: 1, 300: 1}
    assert decode_state_vector(Doc().get_state().hex()) == {}


@pytest.mark.parametrize(
    ("hex_text", "match"),
    [
        ("zz", "not hex"),
        ("020501", "truncated"),
        ("010502ff", "trailing"),
        ("0205010502", "twice"),
        ("ffffffffffffffffffffff", "overlong"),
        ("7f", "claims 127 entries"),
    ],
)
def test_malformed_state_vectors_are_refused_with_the_reason(hex_text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_state_vector(hex_text)


# -- payloads ------------------------------------------------------------------------------


def test_a_real_heartbeat_validates(trio: list[Replica[Agent]]) -> None:
    beat = Heartbeat.model_validate(trio[0].heartbeat())

    assert beat.replica_id == "executor" and beat.outbox >= 1
    assert beat.digest == trio[0].digest()


def test_the_protocol_documents_names_are_accepted() -> None:
    beat = Heartbeat.model_validate(
        {
            "replica_id": "r1",
            "applied_seq": 41,
            "state_vector": "00",
            "digest": "a" * 64,
            "outbox_len": 2,
            "recovery_s": 0.12,
            "clock_offset_s": 0.5,
            "schema_version": 1,
            "started_at": 1.0,
            "sent_at": 2.0,
        }
    )

    assert (beat.outbox, beat.recovery_seconds, beat.clock_offset_ms) == (2, 0.12, 500.0)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"applied_seq": -1}, "applied_seq"),
        ({"applied_seq": "3"}, "applied_seq"),
        ({"applied_seq": True}, "applied_seq"),
        ({"recovery_seconds": math.nan}, "recovery_seconds"),
        ({"recovery_seconds": -0.5}, "recovery_seconds"),
        ({"digest": "ABC"}, "digest"),
        ({"replica_id": "no spaces"}, "replica_id"),
        ({"state_vector": "0"}, "state_vector"),
        ({"sent_at": math.inf}, "sent_at"),
    ],
)
def test_bad_heartbeats_are_refused_naming_the_field(
    trio: list[Replica[Agent]], change: dict[str, Any], where: str
) -> None:
    with pytest.raises(ValidationError) as info:
        Heartbeat.model_validate({**trio[0].heartbeat(), **change})
    assert where in str(info.value)


def test_a_view_round_trips_through_the_json_the_relay_serves(
    trio: list[Replica[Agent]],
) -> None:
    original = view(*(entry(r) for r in trio), head_seq=7, head_time=NOW - 5, served_at=NOW)

    again = ReplicasView.model_validate_json(original.model_dump_json())

    assert again == original
    payload = json.loads(original.model_dump_json())
    assert set(payload) >= {"namespace", "head_seq", "head_time", "replicas"}
    assert {"connected", "last_seen", "digest", "outbox"} <= set(payload["replicas"][0])


def test_a_view_refuses_a_replica_listed_twice(trio: list[Replica[Agent]]) -> None:
    with pytest.raises(ValidationError, match="listed twice"):
        view(entry(trio[0]), entry(trio[0]))


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
heartbeat_like = st.dictionaries(
    st.sampled_from(
        [
            "replica_id",
            "applied_seq",
            "state_vector",
            "digest",
            "outbox",
            "recovery_seconds",
            "clock_offset_ms",
            "schema_version",
            "started_at",
            "sent_at",
            "connected",
            "last_seen",
            "outbox_len",
            "clock_offset_s",
        ]
    ),
    json_scalars | st.sampled_from(["00", "010502", "a" * 64, "r1"]),
)


@settings(max_examples=300, deadline=None)
@given(data=heartbeat_like)
def test_any_heartbeat_payload_validates_or_is_refused(data: dict[str, Any]) -> None:
    for model in (Heartbeat, ReplicaEntry):
        try:
            parsed = model.model_validate(data)
        except ValidationError as exc:
            assert exc.errors()  # every refusal names what was wrong
            continue
        assert parsed.applied_seq is None or parsed.applied_seq >= 0
        assert parsed.state_vector is None or isinstance(
            decode_state_vector(parsed.state_vector), dict
        )
        assert parsed.recovery_seconds is None or math.isfinite(parsed.recovery_seconds)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=300)
    | st.builds(
        lambda head, reps: json.dumps({"namespace": "agent", "head_seq": head, "replicas": reps}),
        json_scalars,
        st.lists(heartbeat_like, max_size=3),
    )
)
def test_any_relay_body_gives_a_view_or_a_validation_error(body: bytes | str) -> None:
    try:
        parsed = ReplicasView.model_validate_json(body)
    except ValidationError:
        return
    report = assess(parsed, NOW)
    assert report.exit_code in (0, 1)


# -- assessment ----------------------------------------------------------------------------


def test_converged_replicas_are_healthy(trio: list[Replica[Agent]]) -> None:
    acked = {"outbox": 0, "applied_seq": 5}

    report = assess(view(*(entry(r, heartbeat=acked) for r in trio), head_seq=5), NOW)

    assert [r.status for r in report.replicas] == [ReplicaStatus.CONVERGED] * 3
    assert all(r.converged and r.lag_seqs == 0 and r.lag_seconds == 0 for r in report.replicas)
    assert report.healthy and report.exit_code == 0


def test_a_replica_behind_the_head_is_lagging_not_diverged(
    trio: list[Replica[Agent]], tmp_path: Path
) -> None:
    executor, supervisor, dashboard = trio
    behind = executor.heartbeat()
    supervisor.state.killswitch.set(False)  # the executor never receives this
    dashboard.apply_update(supervisor.export_update(dashboard.state_vector()))
    at_head = {"outbox": 0, "applied_seq": 9}
    entries = [
        entry(executor, heartbeat={**behind, "outbox": 0, "applied_seq": 8}),
        entry(supervisor, heartbeat=at_head),
        entry(dashboard, heartbeat=at_head),
    ]

    report = assess(view(*entries, head_seq=9, head_time=NOW - 30), NOW)

    rows = by_id(report)
    assert rows["executor"].status is ReplicaStatus.LAGGING
    assert rows["executor"].lag_seqs == 1 and rows["executor"].lag_seconds == pytest.approx(30)
    assert not rows["executor"].converged
    assert rows["supervisor"].status is ReplicaStatus.CONVERGED
    assert report.healthy  # 30 s behind is under the 300 s default

    strict = assess(view(*entries, head_seq=9, head_time=NOW - 30), NOW, Thresholds(lag_s_max=10))

    alerts = by_id(strict)["executor"].alerts
    assert [a.code for a in alerts] == [AlertCode.LAG]
    assert "1 update(s) behind head 9 for 30 s (max 10 s)" in alerts[0].message
    assert strict.exit_code == 1


def test_missing_since_makes_the_lag_exact(trio: list[Replica[Agent]]) -> None:
    late = entry(trio[0], heartbeat={"applied_seq": 2}, missing_since=NOW - 600)

    report = assess(view(late, head_seq=5, head_time=NOW - 1), NOW)

    assert report.replicas[0].lag_seconds == pytest.approx(600)
    assert [a.code for a in report.replicas[0].alerts] == [AlertCode.LAG]


def test_equal_state_vectors_with_different_digests_raise_an_alarm(
    trio: list[Replica[Agent]],
) -> None:
    acked = {"outbox": 0, "applied_seq": 5}
    broken = {**acked, "digest": "f" * 64}
    entries = [entry(trio[0], heartbeat=acked), entry(trio[1], heartbeat=broken)]

    report = assess(view(*entries, head_seq=5), NOW)

    assert {r.status for r in report.replicas} == {ReplicaStatus.DIVERGED}
    alarm = report.replicas[0].alerts[0]
    assert alarm.code is AlertCode.DIVERGED and alarm.severity is Severity.ALARM
    assert "supervisor (ffffffffffff)" in alarm.message and "bug" in alarm.message
    assert report.exit_code == 1


def test_different_state_vectors_with_different_digests_are_only_lagging(
    trio: list[Replica[Agent]],
) -> None:
    executor, supervisor, _ = trio
    old = supervisor.heartbeat()
    executor.state.karma.inc(1)
    entries = [
        entry(executor, heartbeat={"outbox": 0, "applied_seq": 6}),
        entry(supervisor, heartbeat={**old, "outbox": 0, "applied_seq": 5}),
    ]

    report = assess(view(*entries, head_seq=6), NOW)

    assert by_id(report)["supervisor"].status is ReplicaStatus.LAGGING
    assert by_id(report)["executor"].status is ReplicaStatus.CONVERGED
    assert report.healthy


def test_threshold_alerts_give_their_reasons(trio: list[Replica[Agent]]) -> None:
    entries = [
        entry(trio[0], heartbeat={"outbox": 12, "applied_seq": 5}),
        entry(trio[1], heartbeat={"recovery_seconds": 45.0, "applied_seq": 5, "outbox": 0}),
        entry(
            trio[2], heartbeat={"applied_seq": 5, "outbox": 0}, last_seen=NOW - 900, connected=False
        ),
    ]
    limits = Thresholds(outbox_len_max=10)

    report = assess(view(*entries, head_seq=5), NOW, limits)

    rows = by_id(report)
    assert rows["executor"].status is ReplicaStatus.PENDING
    assert [a.message for a in rows["executor"].alerts] == [
        "12 local write(s) not acknowledged by the relay (max 10)"
    ]
    assert [a.message for a in rows["supervisor"].alerts] == [
        "last start took 45 s to recover (max 30 s)"
    ]
    assert [a.message for a in rows["dashboard"].alerts] == [
        "not heard from for 15 min (disconnected; max 5 min)"
    ]


def test_a_replica_ahead_of_the_relay_is_an_alarm(trio: list[Replica[Agent]]) -> None:
    report = assess(view(entry(trio[0], heartbeat={"applied_seq": 12}), head_seq=10), NOW)

    alert = report.replicas[0].alerts[0]
    assert alert.code is AlertCode.AHEAD and alert.severity is Severity.ALARM
    assert "beyond the relay's head 10" in alert.message


def test_a_replica_without_heartbeat_is_unknown_and_quiet_until_silent() -> None:
    fresh = ReplicaEntry(replica_id="new", connected=True, last_seen=NOW - 2)
    gone = ReplicaEntry(replica_id="gone", connected=False, last_seen=NOW - 4000)

    report = assess(view(fresh, gone, head_seq=3), NOW)

    assert [r.status for r in report.replicas] == [ReplicaStatus.UNKNOWN] * 2
    assert by_id(report)["new"].alerts == []
    assert [a.code for a in by_id(report)["gone"].alerts] == [AlertCode.SILENT]


def test_the_relays_clock_is_used_when_it_serves_one(trio: list[Replica[Agent]]) -> None:
    late = entry(trio[0], heartbeat={"applied_seq": 1}, last_seen=NOW - 10)

    report = assess(view(late, head_seq=2, head_time=NOW - 20, served_at=NOW), NOW + 10_000)

    assert report.replicas[0].lag_seconds == pytest.approx(20)
    assert report.replicas[0].last_seen_age_s == pytest.approx(10)
    assert report.assessed_at == NOW


@pytest.mark.parametrize(
    "kwargs",
    [{"lag_s_max": -1}, {"recovery_s_max": math.inf}, {"outbox_len_max": -3}, {"lag_s_max": True}],
)
def test_bad_thresholds_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Thresholds(**kwargs)


# -- rendering -----------------------------------------------------------------------------


def test_the_table_shows_every_replica_status_and_reason(trio: list[Replica[Agent]]) -> None:
    entries = [
        entry(trio[0], heartbeat={"applied_seq": 3, "outbox": 0}, missing_since=NOW - 400),
        entry(trio[1], heartbeat={"applied_seq": 5, "outbox": 0}),
    ]
    report = assess(view(*entries, head_seq=5), NOW)
    buffer = io.StringIO()

    Console(file=buffer, width=250, color_system=None).print(render_table(report))

    text = buffer.getvalue()
    assert "namespace agent · head seq 5 · 1 alert(s)" in text
    assert "executor" in text and "lagging" in text and "6 min 40 s" in text
    assert "supervisor" in text and "converged" in text
    assert "lag: 2 update(s) behind head 5" in text


def test_the_json_rendering_carries_the_verdict(trio: list[Replica[Agent]]) -> None:
    report = assess(view(entry(trio[0], heartbeat={"applied_seq": 0, "outbox": 0})), NOW)

    data = json.loads(render_json(report))

    assert data["healthy"] is True and data["exit_code"] == 0
    assert data["replicas"][0]["status"] == "converged"
    assert data["thresholds"]["lag_s_max"] == 300.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.42, "0.42 s"),
        (3.0, "3 s"),
        (12.7, "12 s"),
        (60, "1 min"),
        (303, "5 min 3 s"),
        (7800, "2 h 10 min"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
    ],
)
def test_durations_read_like_a_person_wrote_them(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text
