"""kill -9 a writing replica at random moments: nothing it reported as written is lost.

A writer process (``_replica_writer.py``) runs a deterministic schedule of writes of every
CRDT kind and prints a line after each write returns. The test SIGKILLs it after a random
number of lines (sometimes before it even opened the store), reads what it printed, then
reopens the store itself. The recovered state must be exactly the state after some prefix
of the schedule that contains every reported write (``sync``), or every write before the
last reported ``flush()`` (``batch``), and at most one write more than was reported. Every
process start must have used a fresh Yjs client id.

The seed is printed in every failure message; ``CRDTSTATE_CRASH_SEED=<seed>`` replays it.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import random
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from crdtstate import Replica

HERE = Path(__file__).resolve().parent
RUN_DEADLINE_S = 30.0


def _load_writer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_replica_writer", HERE / "_replica_writer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


writer = _load_writer()
Child = writer.Child


def empty_state() -> dict[str, Any]:
    return {"config": {}, "hits": 0, "karma": 0, "memory": [], "reg": -1, "seen": []}


def after(state: dict[str, Any], run: int, count: int) -> dict[str, Any]:
    """The state after the first ``count`` writes of run ``run``, from ``state``."""
    out = copy.deepcopy(state)
    for i in range(count):
        writer.apply_to_model(out, run, i)
    return out


def run_and_kill(
    data_dir: Path, durability: str, run: int, rng: random.Random, context: str
) -> tuple[list[str], int | None]:
    """Start a writer, SIGKILL it at a random moment; its output and Yjs client id."""
    flush_every = rng.randint(1, 6)
    kill_after = rng.choice([None, 0, *range(1, 40)])  # None: while it starts up
    child = Child("write", str(data_dir), durability, str(run), str(flush_every))
    try:
        deadline = time.monotonic() + RUN_DEADLINE_S
        if kill_after is not None:
            child.read_until("OPEN", 1, deadline)
            child.read_until("W ", kill_after, deadline)
        child.kill()
        child.drain(deadline)  # whatever it printed before dying counts as reported
        assert "DONE" not in child.lines, f"writer finished before the kill; {context}"
        opened = [line for line in child.lines if line.startswith("OPEN ")]
        if kill_after is not None:
            assert opened, f"writer never opened the store; {child.describe()} {context}"
        return child.lines, int(opened[0].split()[1]) if opened else None
    finally:
        child.close()


def check_recovered(
    data_dir: Path,
    state: dict[str, Any],
    run: int,
    lines: list[str],
    durability: str,
    context: str,
    client_ids: list[int],
) -> dict[str, Any]:
    """Reopen the store; check it against the writer's report; return the recovered state."""
    written = [line.split(" ", 2) for line in lines if line.startswith("W ")]
    reported = len(written)
    assert [int(w[1]) for w in written] == list(range(reported)), f"gaps in output; {context}"
    if durability == "sync":
        guaranteed = reported
    else:
        flushed = [int(line.split()[1]) for line in lines if line.startswith("F ")]
        guaranteed = flushed[-1] + 1 if flushed else 0

    with Replica.open(data_dir, writer.NAMESPACE, writer.CrashState) as r:
        client_ids.append(r.doc.client_id)
        recovered = r.to_dict()
        s = r.state
        assert r.violations() == [], context
        # The brief's checks, stated directly on what was reported up to the guarantee.
        for _, _, what in written[:guaranteed]:
            if what.startswith("append "):
                entry = what.removeprefix("append ")
                assert s.memory.value.count(entry) == 1, f"{entry} not there once; {context}"
        totals = [int(w[2].removeprefix("hits=")) for w in written[:guaranteed] if "hits=" in w[2]]
        if totals:
            assert s.hits.value >= totals[-1], f"hits {s.hits.value} < {totals[-1]}; {context}"
        regs = [int(w[2].removeprefix("reg=")) for w in written[:guaranteed] if "reg=" in w[2]]
        if regs:
            assert s.reg.value >= regs[-1], f"reg {s.reg.value} < {regs[-1]}; {context}"
        assert len(set(s.memory.value)) == len(s.memory.value), f"duplicate entry; {context}"

    # Exactly a prefix of the schedule: no write lost, none torn, none invented.
    candidates = {k: after(state, run, k) for k in range(guaranteed, reported + 2)}
    matches = [k for k, expected in candidates.items() if expected == recovered]
    assert matches, (
        f"run {run}: recovered state is no prefix of {guaranteed}..{reported + 1} writes "
        f"({reported} reported); {context}\nrecovered={recovered}\n"
        f"expected at {guaranteed}: {candidates[guaranteed]}"
    )
    return recovered


def crash_loop(data_dir: Path, durability: str, kills: int, vector_of: Any) -> None:
    seed = int(os.environ.get("CRDTSTATE_CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    context = f"(seed {seed}: replay with CRDTSTATE_CRASH_SEED={seed})"
    state = empty_state()
    writer_ids: list[int] = []
    all_ids: list[int] = []
    for run in range(kills):
        lines, client_id = run_and_kill(data_dir, durability, run, rng, context)
        if client_id is not None:
            writer_ids.append(client_id)
            all_ids.append(client_id)
        state = check_recovered(data_dir, state, run, lines, durability, context, all_ids)

    assert len(set(all_ids)) == len(all_ids), f"a Yjs client id was reused; {context}"
    assert len(writer_ids) >= kills // 2, f"too few writers got going; {context}"
    with Replica.open(data_dir, writer.NAMESPACE, writer.CrashState) as r:
        writers_in_doc = set(vector_of(r))
        assert writers_in_doc <= set(all_ids) | {r.doc.client_id}, context
        assert r.state.memory.value, f"no write ever survived; {context}"


def test_sync_writes_survive_sigkill_at_random_moments(tmp_path: Path, vector_of: Any) -> None:
    crash_loop(tmp_path, "sync", 20, vector_of)


def test_batch_writes_survive_sigkill_once_flushed(tmp_path: Path, vector_of: Any) -> None:
    crash_loop(tmp_path, "batch", 6, vector_of)
