"""A child process for the store's lock, crash and disk-full tests (run by the tests).

Usage::

    _store_writer.py crash PATH DURABILITY SEED   append until killed, printing each op id
    _store_writer.py hold PATH                    hold the store until stdin closes
    _store_writer.py try PATH                     try to open the store once
    _store_writer.py full PATH DURABILITY         hit a file size limit, then recover
    _store_writer.py exit PATH                    BATCH appends, then exit without close()

Every line is flushed as soon as it is written: the parent kills this process at random
moments and must know exactly which calls had returned. Local updates are ``L<op id>`` and
snapshots are the JSON list of every op id appended so far, so the parent can tell from the
file alone which op ids survived. Each loop is bounded so an orphan stops on its own.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import sys
from pathlib import Path

from crdtstate._ids import OpId, Seq
from crdtstate.errors import StoreError
from crdtstate.store import Durability, open_store

_APPENDS_MAX = 20_000


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def crash(path: Path, durability: Durability, seed: int) -> None:
    rng = random.Random(seed)
    store = open_store(path, durability, batch_interval_s=0.002)
    state = store.load()
    known: set[int] = set(json.loads(state.snapshot)) if state.snapshot else set()
    known |= {int(u[1:]) for u in state.tail if u.startswith(b"L")}
    known |= {e.op_id for e in store.outbox(limit=1_000_000)}
    say("start", state.last_op_id)
    expected = state.last_op_id + 1
    seq: int = state.applied_seq
    for i in range(_APPENDS_MAX):
        op_id = store.append_local(b"L%d" % expected, {"n": expected})
        if op_id != expected:
            say("bad-op-id", op_id, "expected", expected)
            sys.exit(3)
        known.add(op_id)
        expected += 1
        say("ok", op_id)
        roll = rng.random()
        if roll < 0.3:
            store.ack(OpId(op_id), Seq(op_id))
        elif roll < 0.5:
            seq += 1
            store.append_remote(b"R%d" % seq, Seq(seq))
        if i % 17 == 16:
            store.write_snapshot(json.dumps(sorted(known)).encode())
        if durability is Durability.BATCH and rng.random() < 0.2:
            store.flush()
            say("flushed", op_id)
    store.close()


def hold(path: Path) -> None:
    store = open_store(path, Durability.SYNC)
    say("locked", os.getpid())
    sys.stdin.read()  # until the parent closes our stdin
    store.close()
    say("closed")


def try_open(path: Path) -> None:
    try:
        store = open_store(path, Durability.SYNC)
    except StoreError as exc:
        say("error", type(exc).__name__, exc)
        return
    store.close()
    say("opened")


def full(path: Path, durability: Durability) -> None:
    # Past RLIMIT_FSIZE a write fails with EFBIG instead of killing us with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    store = open_store(path, durability, batch_interval_s=0.001)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    padding = b"." * 8000
    for i in range(500):
        try:
            op_id = store.append_local(b"L%d" % (i + 1) + padding, {"n": i + 1})
            say("ok", op_id)
            if durability is Durability.BATCH and i % 4 == 3:
                store.flush(timeout_s=30)
                say("flushed", op_id)
        except StoreError as exc:
            say("error", exc)
            break
    else:
        say("never-failed")
        return
    for name, call in (
        ("flush-error", lambda: store.flush(timeout_s=30)),
        ("append-error", lambda: store.append_local(b"refused", {"n": -1})),
    ):
        try:
            call()
            say(name, "none")
        except StoreError as exc:
            say(name, exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    store.flush(timeout_s=30)
    say("healed", store.durable_op_id)
    op_id = store.append_local(b"after", {"n": 0})
    store.flush(timeout_s=30)
    say("ok-after", op_id)
    store.close()
    say("closed")


def exit_without_close(path: Path) -> None:
    store = open_store(path, Durability.BATCH, batch_interval_s=60.0)
    for i in range(50):
        store.append_local(b"L%d" % (i + 1), {"n": i + 1})
    say("appended", store.durable_op_id)


def main() -> None:
    mode, path = sys.argv[1], Path(sys.argv[2])
    if mode == "crash":
        crash(path, Durability(sys.argv[3]), int(sys.argv[4]))
    elif mode == "hold":
        hold(path)
    elif mode == "try":
        try_open(path)
    elif mode == "exit":
        exit_without_close(path)
    elif mode == "full":
        full(path, Durability(sys.argv[3]))
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
