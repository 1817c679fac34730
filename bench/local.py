"""Local write path benchmark: latency per CRDT type, apply throughput, recovery, store size.

Run: ``.venv/bin/python bench/local.py`` (``--quick`` for a short run). Prints markdown
tables. The floor is the same shape of operation on a bare pycrdt ``Doc`` (one map set or
array push in a transaction, no validation, no clock, no store), printed as a ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pycrdt import Array, Doc, Map

from crdtstate import (
    GCounter,
    Log,
    LWWMap,
    LWWRegister,
    ORSet,
    PNCounter,
    Replica,
    Schema,
)


class Bench(Schema):
    """Every CRDT kind once."""

    register = LWWRegister(int, default=0)
    gcount = GCounter()
    pncount = PNCounter()
    tags = ORSet(str)
    config = LWWMap(int)
    memory = Log(str)


def _ops(state: Bench) -> dict[str, Callable[[int], Any]]:
    return {
        "lww.set": lambda i: state.register.set(i),
        "gcounter.inc": lambda i: state.gcount.inc(1),
        "pncounter.dec": lambda i: state.pncount.dec(1),
        "orset.add": lambda i: state.tags.add(f"t{i % 64}"),
        "lwwmap.set": lambda i: state.config.set(f"k{i % 64}", i),
        "log.append": lambda i: state.memory.append(f"entry {i}"),
    }


def _bare_ops() -> dict[str, Callable[[int], Any]]:
    doc: Doc[Any] = Doc()
    m: Map[Any] = doc.get("m", type=Map)
    a: Array[Any] = doc.get("a", type=Array)
    sink: list[bytes] = []
    doc.observe(lambda e: sink.append(e.update) if len(sink) < 1 else None)

    def put(key: str, value: str) -> None:
        with doc.transaction():
            m[key] = value

    def push(value: str) -> None:
        with doc.transaction():
            a.append(value)

    return {
        "lww.set": lambda i: put("r1", f"[1,{i},{i}]"),
        "gcounter.inc": lambda i: put("r1", str(i)),
        "pncounter.dec": lambda i: put("-r1", str(i)),
        "orset.add": lambda i: put(f'"t{i % 64}"\x1fr1', f'[1,{i},"r1.1.{i}"]'),
        "lwwmap.set": lambda i: put(f"k{i % 64}\x1fr1", f"[1,{i},{i}]"),
        "log.append": lambda i: push(f'[1,{i},"r1","entry {i}"]'),
    }


def _latencies(op: Callable[[int], Any], n: int, start: int = 0) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for i in range(start, start + n):
        start = clock()
        op(i)
        out.append((clock() - start) / 1000)
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_latency(n_batch: int, n_sync: int, root: Path, rounds: int = 20) -> None:
    """Per-type write latency; bare and batch-mode writes alternate in ``rounds`` blocks, so
    a change in the machine's load during the run weighs on both sides of the ratio alike."""
    print(f"\n### Write latency (µs per write; batch n={n_batch}, sync n={n_sync})\n")
    print("| op | bare pycrdt p50 | batch p50 | batch p99 | batch/bare | sync p50 | sync p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    bare_ops = _bare_ops()
    bare: dict[str, list[float]] = {name: [] for name in bare_ops}
    batch_lat: dict[str, list[float]] = {name: [] for name in bare_ops}
    batch = Replica.open(root / "batch", "bench", Bench, durability="batch")
    sync = Replica.open(root / "sync", "bench", Bench, durability="sync")
    try:
        batch_ops = _ops(batch.state)
        block = max(1, n_batch // rounds)
        for name in bare_ops:
            for start in range(0, n_batch, block):
                bare[name].extend(_latencies(bare_ops[name], block, start))
                batch_lat[name].extend(_latencies(batch_ops[name], block, start))
        sync_lat = {name: _latencies(op, n_sync) for name, op in _ops(sync.state).items()}
        batch.flush()
    finally:
        batch.close()
        sync.close()
    for name in bare:
        b50 = _pct(bare[name], 0.5)
        p50 = _pct(batch_lat[name], 0.5)
        print(
            f"| {name} | {b50:.1f} | {p50:.1f} | {_pct(batch_lat[name], 0.99):.1f} | "
            f"{p50 / b50:.2f}x | {_pct(sync_lat[name], 0.5):.0f} | "
            f"{_pct(sync_lat[name], 0.99):.0f} |"
        )


def apply_throughput(n: int, root: Path) -> None:
    updates: list[bytes] = []
    writer = Replica.open(root / "w", "apply", Bench, durability="batch")
    writer.doc.recorder = lambda update, op: updates.append(update)
    ops = list(_ops(writer.state).values())
    for i in range(n):
        ops[i % len(ops)](i)
    writer.close()
    reader = Replica.open(root / "r", "apply", Bench, durability="batch")
    start = time.perf_counter()
    for update in updates:
        reader.apply_update(update)
    reader.flush()
    elapsed = time.perf_counter() - start
    reader.close()
    bare: Doc[Any] = Doc()
    start = time.perf_counter()
    for update in updates:
        bare.apply_update(update)
    bare_s = time.perf_counter() - start
    print(f"\n### Apply remote updates (n={n}, mixed types)\n")
    print("| path | updates/s | µs/update |")
    print("|---|---:|---:|")
    print(f"| bare pycrdt Doc.apply_update | {n / bare_s:,.0f} | {bare_s / n * 1e6:.1f} |")
    print(f"| Replica.apply_update (+store) | {n / elapsed:,.0f} | {elapsed / n * 1e6:.1f} |")


def recovery(sizes: list[int], root: Path) -> None:
    print("\n### Restart recovery (mixed writes over every type, batch mode)\n")
    print(
        "| writes | write time s | store MiB | bytes/write | doc state MiB | "
        "bare pycrdt apply s | recovery s | open total s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        path = root / f"rec{size}"
        rep = Replica.open(path, "rec", Bench, durability="batch")
        ops = list(_ops(rep.state).values())
        start = time.perf_counter()
        for i in range(size):
            ops[i % len(ops)](i)
            if i % 50_000 == 0:
                print(f"  ... {i:,}/{size:,}", file=sys.stderr, end="\r")
        rep.flush()
        write_s = time.perf_counter() - start
        state = rep.export_update()
        rep.close()
        bare: Doc[Any] = Doc()  # the floor: pycrdt applying the same whole state
        start = time.perf_counter()
        bare.apply_update(state)
        bare_s = time.perf_counter() - start
        del bare
        size_bytes = sum(p.stat().st_size for p in path.glob("rec.sqlite3*"))
        start = time.perf_counter()
        again = Replica.open(path, "rec", Bench, durability="batch")
        open_s = time.perf_counter() - start
        rec_s = again.recovery_seconds
        again.close()
        print(
            f"| {size:,} | {write_s:.1f} | {size_bytes / 2**20:.1f} | {size_bytes / size:.0f} | "
            f"{len(state) / 2**20:.1f} | {bare_s:.3f} | {rec_s:.3f} | {open_s:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--recovery-only",
        metavar="SIZES",
        help="only the recovery table, for these comma-separated write counts",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crdtstate-bench-") as tmp:
        root = Path(tmp)
        if args.recovery_only:
            recovery([int(x) for x in args.recovery_only.split(",") if x], root)
        elif args.quick:
            write_latency(2_000, 50, root)
            apply_throughput(5_000, root)
            recovery([20_000], root)
        else:
            write_latency(20_000, 300, root)
            apply_throughput(50_000, root)
            recovery([100_000, 1_000_000], root)


if __name__ == "__main__":
    main()
