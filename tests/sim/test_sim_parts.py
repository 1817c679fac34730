"""The simulation's own parts: links, the command line's plan, opt-in faults, invariants.

These pin the behaviour the end-to-end tests rely on without showing it directly: a link is
FIFO even when it duplicates or holds frames, ``--nightly`` is one flag, an opt-in fault
changes nothing for runs that do not ask for it.
"""

from __future__ import annotations

import asyncio

import pytest

from chaos.__main__ import build_parser
from chaos.sim import SimConfig, run_seed
from chaos.sim.cli import EXTRA_FAULT_NAMES, run_plan
from chaos.sim.invariants import update_op_id
from chaos.sim.net import DATA, Item, Link
from chaos.sim.planted import PlantOptions
from chaos.sim.world import EXTRA_FAULTS, World
from crdtstate._ids import OpId
from crdtstate.sync import wire


def _world(seed: int = 1) -> World:
    return World(seed, SimConfig(), PlantOptions())


def _bcast(seq: int) -> bytes:
    return wire.encode_broadcast(seq, "r0", b"\x00\x00")


def test_a_link_delivers_in_order_through_duplicates_and_a_partition() -> None:
    async def scenario() -> list[bytes]:
        world = _world()
        link = Link(world, "t<", 0.001, up=False)
        got: list[bytes] = []

        def receive(item: Item) -> None:
            got.append(item.data)

        link.receiver = receive
        link.dup_p = 1.0
        link.push(DATA, _bcast(1))
        link.dup_p = 0.0
        await world.advance(1.0)
        assert len(got) == 2  # 1 and its duplicate
        link.pause()  # a partition holds whatever is in flight
        link.push(DATA, _bcast(2))
        await world.advance(2.0)
        assert len(got) == 2
        link.resume()
        link.push(DATA, _bcast(3))
        await world.advance(3.0)
        return got

    assert asyncio.run(scenario()) == [_bcast(1), _bcast(1), _bcast(2), _bcast(3)]


def test_a_cut_link_loses_the_frames_behind_the_cut() -> None:
    async def scenario() -> list[bytes]:
        world = _world()
        link = Link(world, "t>", 0.001, up=True)
        got: list[bytes] = []
        link.receiver = lambda item: got.append(item.data)
        for seq in (1, 2, 3):
            link.push(DATA, _bcast(seq))
        assert link.cut(1) == 2
        await world.advance(1.0)
        return got

    assert asyncio.run(scenario()) == [_bcast(1)]


def test_update_op_id_reads_update_frames_only() -> None:
    frame = wire.encode(wire.Update(OpId(300), b"", b"\x00\x00"))
    assert update_op_id(frame) == 300
    assert update_op_id(_bcast(5)) is None


def test_nightly_is_one_flag_and_explicit_values_win() -> None:
    parser = build_parser()
    seeds, config = run_plan(parser.parse_args(["simulate", "--nightly"]))
    assert (seeds, config.steps, config.replicas) == (20_000, 500, 4)
    seeds, config = run_plan(parser.parse_args(["simulate", "--nightly", "--steps", "50"]))
    assert (seeds, config.steps) == (20_000, 50)
    seeds, config = run_plan(parser.parse_args(["simulate"]))
    assert (seeds, config.steps, config.replicas, config.faults) == (1000, 200, 3, ())
    with pytest.raises(ValueError):
        run_plan(parser.parse_args(["simulate", "--seeds", "0"]))


def test_opt_in_faults_are_listed_and_change_nothing_unless_asked() -> None:
    assert set(EXTRA_FAULT_NAMES) == set(EXTRA_FAULTS)
    args = build_parser().parse_args(["simulate", "--fault", "disk_full", "--fault", "disk_full"])
    assert run_plan(args)[1].faults == ("disk_full",)
    plain = World(5, SimConfig(), PlantOptions()).profile
    extra = World(5, SimConfig(faults=("disk_full",)), PlantOptions()).profile
    assert extra.actions == (*plain.actions, "disk_full")
    assert extra.relay == plain.relay and extra.client == plain.client


def test_zero_steps_still_heals_and_checks() -> None:
    result = run_seed(11, SimConfig(steps=0))
    assert result.ok, result.failures
    assert result.stats == {}
