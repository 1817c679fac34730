"""File mirrors on real replicas (SQLite stores in tmp dirs): sync, audit, adopt, timer."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtstate import LWWMap, LWWRegister, PNCounter, Replica, Schema
from crdtstate.mirrors import (
    AdoptError,
    FindingKind,
    JsonKeyMirror,
    MirrorConfigError,
    MirrorError,
    MirrorMeta,
    MirrorSet,
    MirrorWriteError,
    SyncAction,
    SyncResult,
    TextMirror,
)
from crdtstate.mirrors._atomic import remove_stale_temps, write_atomic
from crdtstate.mirrors.meta import WriteState

KILLSWITCH_VALUES = {True: "ACTIVE", False: "INACTIVE"}


class Agent(Schema):
    killswitch = LWWRegister(bool, default=False)
    mode = LWWRegister(str, default="idle")
    budget = LWWRegister(int, default=0)
    config = LWWMap(str)
    karma = PNCounter()
    __mirrors__ = [
        TextMirror("killswitch", "emergency.txt", values=KILLSWITCH_VALUES),
        JsonKeyMirror("killswitch", "config.json", key="emergency_active"),
    ]


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    path = tmp_path / "legacy"
    path.mkdir()
    return path


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica[Agent]]:
    r = Replica.open(tmp_path / "data", "agent", Agent, replica_id="executor")
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def mirrors(legacy: Path) -> Iterator[MirrorSet]:
    ms = MirrorSet.from_schema(Agent, root=legacy, interval_s=None, on_report=None)
    try:
        yield ms
    finally:
        ms.close()


def meta_of(legacy: Path) -> MirrorMeta:
    meta = MirrorMeta.from_json(json.loads((legacy / "emergency.txt.meta.json").read_text()))
    assert meta is not None
    return meta


def json_doc(legacy: Path) -> dict[str, Any]:
    doc = json.loads((legacy / "config.json").read_text())
    assert isinstance(doc, dict)
    return doc


# -- writing -------------------------------------------------------------------------------


def test_attach_writes_every_mirror_before_returning(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    (legacy / "config.json").write_text(json.dumps({"supervisor": {"rate": 3}, "name": "x"}))

    results = mirrors.attach(replica)

    assert [r.action for r in results] == [SyncAction.WRITTEN, SyncAction.WRITTEN]
    assert (legacy / "emergency.txt").read_text() == "INACTIVE\n"
    doc = json_doc(legacy)
    assert list(doc)[:3] == ["supervisor", "name", "emergency_active"]
    assert doc["supervisor"] == {"rate": 3} and doc["emergency_active"] is False
    record = doc["_crdtstate"]["emergency_active"]
    assert record["field"] == "killswitch" and record["stamp"] is None
    assert record["last_synced"].endswith("Z")
    assert meta_of(legacy).stamp is None


def test_every_local_change_rewrites_mirrors_with_the_winning_stamp(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.attach(replica)

    stamp = replica.state.killswitch.set(True)

    assert (legacy / "emergency.txt").read_text() == "ACTIVE\n"
    assert meta_of(legacy).stamp == stamp
    assert meta_of(legacy).state is WriteState.SYNCED
    doc = json_doc(legacy)
    assert doc["emergency_active"] is True
    assert doc["_crdtstate"]["emergency_active"]["stamp"]["wall_ms"] == stamp.wall_ms
    assert mirrors.audit() == []


def test_a_remote_change_rewrites_mirrors(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path, tmp_path: Path
) -> None:
    mirrors.attach(replica)
    with Replica.open(tmp_path / "sup", "agent", Agent, replica_id="supervisor") as other:
        other.apply_update(replica.export_update())
        other.state.killswitch.set(True)
        replica.apply_update(other.export_update(replica.state_vector()))

    assert (legacy / "emergency.txt").read_text() == "ACTIVE\n"
    assert json_doc(legacy)["emergency_active"] is True
    assert meta_of(legacy).stamp == replica.state.killswitch.stamp
    assert mirrors.audit() == []


def test_closed_mirror_set_no_longer_follows_changes(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.attach(replica)
    mirrors.close()

    replica.state.killswitch.set(True)

    assert (legacy / "emergency.txt").read_text() == "INACTIVE\n"


# -- audit ---------------------------------------------------------------------------------


def test_audit_reports_a_hand_edit_with_the_content_and_the_state(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.attach(replica)
    (legacy / "emergency.txt").write_text("ACTIVE")

    findings = mirrors.audit()

    assert [f.kind for f in findings] == [FindingKind.HAND_EDITED]
    message = findings[0].message
    assert "emergency.txt" in message and '"ACTIVE"' in message
    assert "the state says false" in message
    assert "adopt" in findings[0].hint


def test_audit_reports_missing_files_and_keys_even_for_a_default_value(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.bind(replica)

    findings = mirrors.audit()

    assert {f.kind for f in findings} == {FindingKind.MISSING}
    assert len(findings) == 2
    assert any("the file is missing" in f.message for f in findings)
    assert any("key is missing" in f.message for f in findings)
    assert all("never written" in f.message for f in findings)


def test_audit_reports_a_stale_mirror_with_both_stamps(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.attach(replica)
    old = replica.state.killswitch.set(True)
    mirrors.close()
    new = replica.state.killswitch.set(False)

    auditor = MirrorSet.from_schema(Agent, root=legacy, interval_s=None, on_report=None)
    auditor.bind(replica)
    findings = auditor.audit()

    assert [f.kind for f in findings] == [FindingKind.STALE, FindingKind.STALE]
    assert str(old) in findings[0].message and str(new) in findings[0].message


def test_a_file_with_the_right_value_but_no_record_is_stale(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.attach(replica)
    (legacy / "emergency.txt.meta.json").unlink()

    findings = mirrors.audit()

    assert [f.kind for f in findings] == [FindingKind.STALE]
    assert "no last_synced record" in findings[0].message


def test_an_interrupted_text_write_reads_as_stale_not_as_a_hand_edit(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.attach(replica)
    replica.state.killswitch.set(True)
    mirrors.close()
    replica.state.killswitch.set(False)
    # What a crash between the sidecar's "writing" record and the file's rename leaves.
    old = (legacy / "emergency.txt").read_bytes()
    record = MirrorMeta(
        "killswitch",
        False,
        replica.state.killswitch.stamp,
        time.time(),
        WriteState.WRITING,
        hashlib.sha256(old).hexdigest(),
    )
    (legacy / "emergency.txt.meta.json").write_text(json.dumps(record.to_json()))
    auditor = MirrorSet.from_schema(Agent, root=legacy, interval_s=None, on_report=None)
    auditor.bind(replica)

    findings = [f for f in auditor.audit() if f.path.name == "emergency.txt"]

    assert [f.kind for f in findings] == [FindingKind.STALE]
    assert "interrupted" in findings[0].message


def test_unparsable_json_is_reported_then_kept_aside_and_rewritten(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.attach(replica)
    (legacy / "config.json").write_text('{"emergency_active": fal')

    findings = mirrors.audit()
    results = mirrors.sync()

    assert [f.kind for f in findings] == [FindingKind.HAND_EDITED]
    assert "does not parse as JSON" in findings[0].message
    json_result = next(r for r in results if r.mirror.path.name == "config.json")
    assert json_result.action is SyncAction.WRITTEN and "kept as" in json_result.detail
    kept = [p for p in legacy.iterdir() if p.name.startswith("config.json.unparsable-")]
    assert len(kept) == 1 and kept[0].read_text() == '{"emergency_active": fal'
    assert json_doc(legacy)["emergency_active"] is False
    assert mirrors.audit() == []


# -- sync ----------------------------------------------------------------------------------


def test_sync_repairs_every_finding_and_says_what_it_was(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.attach(replica)
    replica.state.killswitch.set(True)
    (legacy / "emergency.txt").write_text("INACTIVE\n")
    doc = json_doc(legacy)
    del doc["emergency_active"]
    (legacy / "config.json").write_text(json.dumps(doc))

    results = mirrors.sync()

    assert [r.action for r in results] == [SyncAction.WRITTEN, SyncAction.WRITTEN]
    assert [r.finding.kind for r in results if r.finding] == [
        FindingKind.HAND_EDITED,
        FindingKind.MISSING,
    ]
    assert (legacy / "emergency.txt").read_text() == "ACTIVE\n"
    assert json_doc(legacy)["emergency_active"] is True
    assert mirrors.audit() == []


def test_sync_leaves_a_legacy_value_of_a_never_written_field_for_adoption(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    (legacy / "emergency.txt").write_text("ACTIVE\n")  # from before crdtstate

    results = mirrors.attach(replica)

    text = next(r for r in results if r.mirror.path.name == "emergency.txt")
    assert text.action is SyncAction.SKIPPED and "never written" in text.detail
    assert (legacy / "emergency.txt").read_text() == "ACTIVE\n"
    assert [f.kind for f in mirrors.audit()] == [FindingKind.HAND_EDITED]

    adoptions = mirrors.adopt(legacy / "emergency.txt")

    assert [a.written for a in adoptions] == [True]
    assert replica.state.killswitch.value is True
    assert json_doc(legacy)["emergency_active"] is True
    assert mirrors.audit() == []


def test_sync_force_overwrites_a_legacy_value(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    (legacy / "emergency.txt").write_text("ACTIVE\n")
    mirrors.bind(replica)

    results = mirrors.sync(force=True)

    assert all(r.ok for r in results)
    assert (legacy / "emergency.txt").read_text() == "INACTIVE\n"


def test_sync_does_not_roll_back_a_mirror_of_a_write_this_replica_has_not_seen(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path, tmp_path: Path
) -> None:
    mirrors.attach(replica)
    replica.state.killswitch.set(True)
    mirrors.close()
    with Replica.open(tmp_path / "fresh", "agent", Agent, replica_id="fresh") as behind:
        other = MirrorSet.from_schema(Agent, root=legacy, interval_s=None, on_report=None)
        other.bind(behind)

        results = other.sync()
        findings = other.audit()

    assert {r.action for r in results} == {SyncAction.SKIPPED}
    assert all("newer than this replica" in r.detail for r in results)
    assert (legacy / "emergency.txt").read_text() == "ACTIVE\n"
    assert {f.kind for f in findings} == {FindingKind.STALE}
    assert all("lags" in f.message for f in findings)


def test_a_value_without_a_mapping_entry_is_reported_and_the_file_kept(
    replica: Replica[Agent], legacy: Path
) -> None:
    mode = TextMirror("mode", "mode.txt", values={"idle": "IDLE", "busy": "BUSY"})
    reports: list[SyncResult] = []
    with MirrorSet([mode], root=legacy, interval_s=None, on_report=reports.append) as ms:
        ms.attach(replica)
        reports.clear()
        replica.state.mode.set("sleeping")

        assert (legacy / "mode.txt").read_text() == "IDLE\n"
        assert [r.action for r in reports] == [SyncAction.FAILED]
        assert '"sleeping"' in reports[0].detail
        assert [f.kind for f in ms.audit()] == [FindingKind.UNRENDERABLE]


def test_text_mirrors_without_a_mapping_hold_strings_raw_and_other_values_as_json(
    replica: Replica[Agent], legacy: Path
) -> None:
    declared = [TextMirror("mode", "mode.txt"), TextMirror("budget", "budget.txt")]
    with MirrorSet(declared, root=legacy, interval_s=None, on_report=None) as ms:
        ms.attach(replica)
        replica.state.mode.set("busy now")
        replica.state.budget.set(42)

        assert (legacy / "mode.txt").read_text() == "busy now\n"
        assert (legacy / "budget.txt").read_text() == "42\n"
        assert ms.audit() == []
        (legacy / "budget.txt").write_text("forty")
        assert [f.kind for f in ms.audit()] == [FindingKind.HAND_EDITED]


def test_a_map_key_can_be_mirrored_and_its_delete_shows_as_null(
    replica: Replica[Agent], legacy: Path
) -> None:
    region = JsonKeyMirror("config", "settings.json", "region", map_key="region")
    with MirrorSet([region], root=legacy, interval_s=None, on_report=None) as ms:
        ms.attach(replica)
        replica.state.config.set("region", "eu-west")
        assert json.loads((legacy / "settings.json").read_text())["region"] == "eu-west"

        replica.state.config.delete("region")

        assert json.loads((legacy / "settings.json").read_text())["region"] is None
        assert ms.audit() == []


# -- adopt ---------------------------------------------------------------------------------


def test_adopt_turns_a_hand_edit_into_a_write_every_replica_gets(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path, tmp_path: Path
) -> None:
    mirrors.attach(replica)
    replica.state.killswitch.set(True)
    before = replica.state.killswitch.stamp
    (legacy / "emergency.txt").write_text("INACTIVE\n")  # an operator's manual fix

    adoptions = mirrors.adopt(legacy / "emergency.txt")

    assert len(adoptions) == 1 and adoptions[0].old is True and adoptions[0].new is False
    assert replica.state.killswitch.value is False
    assert before is not None and adoptions[0].stamp is not None
    assert adoptions[0].stamp > before
    assert json_doc(legacy)["emergency_active"] is False
    assert mirrors.audit() == []
    other_legacy = tmp_path / "other-legacy"
    other_legacy.mkdir()
    with Replica.open(tmp_path / "sup", "agent", Agent, replica_id="supervisor") as other:
        other.apply_update(replica.export_update())
        with MirrorSet.from_schema(Agent, root=other_legacy, interval_s=None) as theirs:
            theirs.attach(other)
        assert other.state.killswitch.value is False
    assert (other_legacy / "emergency.txt").read_text() == "INACTIVE\n"


def test_adopt_of_a_json_key_writes_the_field(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.attach(replica)
    doc = json_doc(legacy)
    doc["emergency_active"] = True
    (legacy / "config.json").write_text(json.dumps(doc))

    adoptions = mirrors.adopt(str(legacy / "config.json"))

    assert [a.new for a in adoptions] == [True]
    assert replica.state.killswitch.value is True
    assert (legacy / "emergency.txt").read_text() == "ACTIVE\n"


@pytest.mark.parametrize("content", ["MAYBE", "", "active", "\xff"])
def test_adopt_refuses_content_that_is_not_a_mapped_value_and_writes_nothing(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path, content: str
) -> None:
    mirrors.attach(replica)
    replica.state.killswitch.set(True)
    stamp = replica.state.killswitch.stamp
    (legacy / "emergency.txt").write_text(content)

    with pytest.raises(AdoptError, match="cannot adopt") as info:
        mirrors.adopt(legacy / "emergency.txt")

    assert "emergency.txt" in str(info.value)
    assert replica.state.killswitch.stamp == stamp
    assert (legacy / "emergency.txt").read_text() == content


def test_adopt_refuses_files_that_are_not_mirrors_or_are_missing(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.bind(replica)

    with pytest.raises(AdoptError, match="is not a mirror file"):
        mirrors.adopt(legacy / "other.txt")
    with pytest.raises(AdoptError, match="missing"):
        mirrors.adopt(legacy / "emergency.txt")
    assert replica.state.killswitch.stamp is None


def test_adopt_of_the_current_value_writes_nothing(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    mirrors.attach(replica)
    replica.state.killswitch.set(True)
    stamp = replica.state.killswitch.stamp

    adoptions = mirrors.adopt(legacy / "emergency.txt")

    assert [a.written for a in adoptions] == [False]
    assert replica.state.killswitch.stamp == stamp


# -- the timer -----------------------------------------------------------------------------


def test_the_periodic_sync_overwrites_a_direct_write_and_reports_it(
    replica: Replica[Agent], legacy: Path, wait_until: Callable[..., Any]
) -> None:
    reports: list[SyncResult] = []
    ms = MirrorSet.from_schema(Agent, root=legacy, interval_s=0.05, on_report=reports.append)
    try:
        ms.attach(replica)
        reports.clear()
        (legacy / "emergency.txt").write_text("ACTIVE\n")

        wait_until(lambda: (legacy / "emergency.txt").read_text() == "INACTIVE\n")
        wait_until(lambda: bool(reports))

        assert reports[0].finding is not None
        assert reports[0].finding.kind is FindingKind.HAND_EDITED
    finally:
        ms.close()
    assert not any(t.name.startswith("crdtstate-mirrors") for t in threading.enumerate())


def test_changes_racing_the_timer_end_with_the_last_value_mirrored(
    replica: Replica[Agent], legacy: Path, tmp_path: Path, wait_until: Callable[..., Any]
) -> None:
    ms = MirrorSet.from_schema(Agent, root=legacy, interval_s=0.005, on_report=None)
    other = Replica.open(tmp_path / "sup", "agent", Agent, replica_id="supervisor")
    try:
        ms.attach(replica)

        def remote_writes() -> None:
            for i in range(40):
                other.state.killswitch.set(i % 2 == 1)
                replica.apply_update(other.export_update(replica.state_vector()))

        writer = threading.Thread(target=remote_writes)
        writer.start()
        for i in range(40):
            replica.state.killswitch.set(i % 2 == 0)
        writer.join(timeout=60)
        assert not writer.is_alive(), "a mirror write deadlocked against the timer"
        final = "ACTIVE\n" if replica.state.killswitch.value else "INACTIVE\n"

        wait_until(lambda: (legacy / "emergency.txt").read_text() == final)
        assert ms.audit() == []
    finally:
        ms.close()
        other.close()


def test_the_timer_stops_by_itself_when_the_replica_closes_first(
    tmp_path: Path, legacy: Path, wait_until: Callable[..., Any]
) -> None:
    replica = Replica.open(tmp_path / "short", "agent", Agent)
    ms = MirrorSet.from_schema(Agent, root=legacy, interval_s=0.01, on_report=None)
    ms.attach(replica)
    replica.close()

    def stopped() -> bool:
        return not any(t.name.startswith("crdtstate-mirrors") for t in threading.enumerate())

    wait_until(stopped)
    ms.close()


def test_a_directory_in_place_of_a_mirror_fails_and_is_left_alone(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path
) -> None:
    (legacy / "config.json").mkdir()
    (legacy / "emergency.txt").mkdir()

    results = mirrors.attach(replica)

    assert [r.action for r in results] == [SyncAction.FAILED, SyncAction.FAILED]
    assert (legacy / "config.json").is_dir() and (legacy / "emergency.txt").is_dir()
    assert all(str(r.mirror.path) in r.detail for r in results)


# -- declarations --------------------------------------------------------------------------


def test_bind_names_every_field_a_mirror_cannot_project(
    replica: Replica[Agent], legacy: Path
) -> None:
    declared = [
        TextMirror("karma", "karma.txt"),
        TextMirror("nothing", "nothing.txt"),
        JsonKeyMirror("config", "c.json", "x"),
        JsonKeyMirror("mode", "m.json", "x", map_key="k"),
    ]
    ms = MirrorSet(declared, root=legacy, interval_s=None)

    with pytest.raises(MirrorConfigError) as info:
        ms.bind(replica)

    message = str(info.value)
    assert "'karma' is a pncounter field" in message
    assert "unknown field 'nothing'" in message
    assert "is an LWW map; give map_key" in message
    assert "is a register; drop map_key" in message
    with pytest.raises(MirrorError, match="not bound"):
        ms.audit()


def test_two_mirrors_may_not_write_one_file(legacy: Path) -> None:
    with pytest.raises(MirrorConfigError, match="would both write"):
        MirrorSet(
            [TextMirror("killswitch", "a.txt"), JsonKeyMirror("mode", "a.txt", "k")],
            root=legacy,
        )
    with pytest.raises(MirrorConfigError, match="the same key"):
        MirrorSet(
            [JsonKeyMirror("killswitch", "a.json", "k"), JsonKeyMirror("mode", "a.json", "k")],
            root=legacy,
        )
    ok = MirrorSet(
        [JsonKeyMirror("killswitch", "a.json", "k"), JsonKeyMirror("mode", "a.json", "m")],
        root=legacy,
    )
    assert len(ok.mirrors) == 2


def test_schema_mirrors_must_name_declared_fields() -> None:
    class Broken(Schema):
        flag = LWWRegister(bool, default=False)
        __mirrors__ = [TextMirror("flga", "flag.txt")]

    with pytest.raises(MirrorConfigError, match="'flga', which the schema does not declare"):
        MirrorSet.from_schema(Broken)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TextMirror("1bad", "x.txt"), "invalid field name"),
        (lambda: TextMirror("flag", ""), "non-empty path"),
        (lambda: TextMirror("flag", "x.txt", values={True: " ON"}), "surrounding whitespace"),
        (lambda: TextMirror("flag", "x.txt", values={True: "ON", False: "ON"}), "mapped twice"),
        (lambda: TextMirror("flag", "x.txt", values={}), "empty"),
        (lambda: TextMirror("flag", "x.txt", values={True: 1}), "non-empty strings"),  # type: ignore[arg-type]
        (lambda: JsonKeyMirror("flag", "x.json", "", values=None), "non-empty string"),
        (lambda: JsonKeyMirror("flag", "x.json", "k", meta_key="k"), "meta_key"),
    ],
)
def test_bad_declarations_say_what_is_wrong(make: Callable[[], object], match: str) -> None:
    with pytest.raises(MirrorConfigError, match=match):
        make()


# -- atomic writes -------------------------------------------------------------------------


def test_atomic_write_keeps_permissions_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "emergency.txt"
    target.write_text("old")
    os.chmod(target, 0o640)

    write_atomic(target, b"new")

    assert target.read_bytes() == b"new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emergency.txt"]


def test_atomic_write_into_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(MirrorWriteError, match="cannot write"):
        write_atomic(tmp_path / "nowhere" / "x.txt", b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_symlinked_mirror_keeps_its_link(
    replica: Replica[Agent], mirrors: MirrorSet, legacy: Path, tmp_path: Path
) -> None:
    real = tmp_path / "real-emergency.txt"
    real.write_text("INACTIVE\n")
    (legacy / "emergency.txt").symlink_to(real)
    mirrors.attach(replica)

    replica.state.killswitch.set(True)

    assert (legacy / "emergency.txt").is_symlink()
    assert real.read_text() == "ACTIVE\n"


def test_stale_temporary_files_of_killed_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "emergency.txt"
    old = tmp_path / ".emergency.txt.crdtstate-abc.tmp"
    fresh = tmp_path / ".emergency.txt.crdtstate-def.tmp"
    other = tmp_path / ".other.crdtstate-abc.tmp"
    for path in (old, fresh, other):
        path.write_text("x")
    past = time.time() - 3600
    os.utime(old, (past, past))
    os.utime(other, (past, past))

    assert remove_stale_temps(target) == 1
    assert not old.exists() and fresh.exists() and other.exists()


# -- garbage in the files ------------------------------------------------------------------

garbage = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    st.sampled_from([b"ACTIVE", b"INACTIVE\n", b"  ACTIVE  ", b"true", b"null", b"[]", b"{}"]),
    st.dictionaries(st.text(max_size=8), st.integers() | st.booleans() | st.none(), max_size=4).map(
        lambda d: json.dumps(d).encode()
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=garbage, doc=garbage, sidecar=garbage)
def test_any_file_content_is_audited_without_crashing_and_sync_repairs_it(
    replica: Replica[Agent],
    mirrors: MirrorSet,
    legacy: Path,
    text: bytes,
    doc: bytes,
    sidecar: bytes,
) -> None:
    mirrors.bind(replica)
    if replica.state.killswitch.stamp is None:
        replica.state.killswitch.set(True)
    (legacy / "emergency.txt").write_bytes(text)
    (legacy / "config.json").write_bytes(doc)
    (legacy / "emergency.txt.meta.json").write_bytes(sidecar)

    findings = mirrors.audit()
    results = mirrors.sync()

    assert all(f.message and f.kind in FindingKind for f in findings)
    assert all(r.ok for r in results), [r.detail for r in results]
    assert mirrors.audit() == []
    assert (legacy / "emergency.txt").read_text() == "ACTIVE\n"
    assert json_doc(legacy)["emergency_active"] is True
