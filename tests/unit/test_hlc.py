"""Hybrid logical clock: monotonic through wall-clock steps back, skew and observation.

Also the clock as LWW writes see it: a write made after a step back, or on a replica whose
clock runs behind, still wins over what its writer observed.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstate import HybridClock, Stamp
from crdtstate.hlc import wall_clock_ms


class Wall:
    def __init__(self, now_ms: int = 1_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def test_tick_follows_the_wall_clock_while_it_moves_forward() -> None:
    wall = Wall()
    clock = HybridClock(now_ms=wall)
    assert clock.tick() == (1_000_000, 0)
    wall.now_ms += 5
    assert clock.tick() == (1_000_005, 0)
    assert clock.last == (1_000_005, 0)


def test_tick_counts_within_one_millisecond() -> None:
    clock = HybridClock(now_ms=Wall())
    assert [clock.tick() for _ in range(3)] == [(1_000_000, 0), (1_000_000, 1), (1_000_000, 2)]


def test_tick_keeps_increasing_when_the_wall_clock_steps_back() -> None:
    wall = Wall()
    clock = HybridClock(now_ms=wall)
    first = clock.tick()
    wall.now_ms -= 60_000  # NTP step back by a minute
    second = clock.tick()
    assert second > first
    assert second == (first[0], first[1] + 1)
    assert clock.drift_ms() == 60_000


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(-10_000, 10_000), st.booleans()), max_size=60))
def test_stamps_strictly_increase_whatever_the_wall_clock_does(
    steps: list[tuple[int, bool]],
) -> None:
    wall = Wall()
    clock = HybridClock(now_ms=wall)
    issued = [clock.tick()]
    for delta_ms, observe in steps:
        wall.now_ms += delta_ms
        if observe:
            seen = (wall.now_ms + delta_ms, abs(delta_ms) % 7)
            clock.observe(*seen)
            assert clock.tick() > seen
        issued.append(clock.tick())
    assert all(a < b for a, b in itertools.pairwise(issued))


def test_observe_moves_the_clock_to_a_later_stamp_only() -> None:
    clock = HybridClock(now_ms=Wall())
    clock.observe(2_000_000, 4)
    assert clock.last == (2_000_000, 4)
    clock.observe(1_500_000, 9)  # older: ignored
    assert clock.last == (2_000_000, 4)
    assert clock.tick() == (2_000_000, 5)


def test_offset_skews_the_physical_reading() -> None:
    wall = Wall()
    ahead = HybridClock(now_ms=wall, offset_ms=3_600_000)
    assert ahead.physical_ms() == 1_000_000 + 3_600_000
    assert ahead.tick() == (4_600_000, 0)
    assert ahead.drift_ms() == 0
    ahead.offset_ms = 0  # the skew is corrected: logical time stays ahead for a while
    assert ahead.drift_ms() == 3_600_000
    assert ahead.tick() == (4_600_000, 1)


def test_the_default_clock_reads_the_system_time() -> None:
    before = wall_clock_ms()
    wall_ms, _ = HybridClock().tick()
    assert before <= wall_ms <= wall_clock_ms()


def test_ticks_from_many_threads_are_all_distinct() -> None:
    clock = HybridClock(now_ms=Wall())
    results: list[list[tuple[int, int]]] = [[] for _ in range(4)]

    def work(out: list[tuple[int, int]]) -> None:
        for _ in range(500):
            out.append(clock.tick())

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    everything = [s for out in results for s in out]
    assert len(set(everything)) == 2000
    for out in results:
        assert out == sorted(out)


def test_stamps_order_by_time_then_counter_then_replica_id() -> None:
    assert Stamp(1, 0, "z") < Stamp(2, 0, "a")
    assert Stamp(1, 0, "z") < Stamp(1, 1, "a")
    assert Stamp(1, 1, "a") < Stamp(1, 1, "b")
    assert max([Stamp(5, 2, "a"), Stamp(5, 2, "c"), Stamp(5, 1, "z")]).replica_id == "c"
    assert str(Stamp(5, 2, "r1")) == "5.2@r1"


# -- the clock under LWW writes ------------------------------------------------------------


def test_a_write_after_a_step_back_still_wins(make_doc: Any, manual_time: Any) -> None:
    doc = make_doc("a")
    first = doc.state.title.set("before")
    manual_time.advance(-3_600_000)  # the wall clock steps back an hour
    second = doc.state.title.set("after")
    third = doc.state.title.set("later still")
    assert first < second < third
    assert doc.state.title.value == "later still"
    assert doc.state.title.stamp == third


def test_a_restarted_replica_behind_in_time_still_overwrites_its_earlier_write(
    make_doc: Any, manual_time: Any
) -> None:
    old = make_doc("a")
    old.state.title.set("from the old process")
    manual_time.advance(-86_400_000)  # new process, wall clock a day behind, fresh clock
    new = make_doc("a", client_id=99)
    new.apply_update(old.export_update())
    stamp = new.state.title.set("from the new process")
    assert stamp > old.state.title.stamp
    old.apply_update(new.export_update())
    assert old.state.title.value == new.state.title.value == "from the new process"


def test_skewed_replicas_respect_what_they_observed(make_doc: Any) -> None:
    ahead = make_doc("a", offset_ms=+3_600_000)
    behind = make_doc("b", offset_ms=-3_600_000)

    # Concurrent writes: the replica an hour ahead wins (that is what skew costs).
    ahead.state.title.set("ahead")
    behind.state.title.set("behind")
    ahead.apply_update(behind.export_update())
    behind.apply_update(ahead.export_update())
    assert ahead.state.title.value == behind.state.title.value == "ahead"

    # A write made after observing the winner wins, even from the clock behind.
    later = behind.state.title.set("behind, after seeing ahead")
    assert later > ahead.state.title.stamp
    ahead.apply_update(behind.export_update())
    assert ahead.state.title.value == "behind, after seeing ahead"

    # Same for a map key, including a delete made after observing a set.
    ahead.state.config.set("k", 1)
    behind.apply_update(ahead.export_update())
    behind.state.config.delete("k")
    ahead.apply_update(behind.export_update())
    assert "k" not in ahead.state.config and "k" not in behind.state.config


def test_equal_stamps_are_broken_by_replica_id(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    stamp_a = a.state.title.set("from a")
    stamp_b = b.state.title.set("from b")
    assert stamp_a[:2] == stamp_b[:2]  # same wall time and counter: a tie
    a.apply_update(b.export_update())
    b.apply_update(a.export_update())
    assert a.state.title.value == b.state.title.value == "from b"
    assert a.state.title.stamp == stamp_b
