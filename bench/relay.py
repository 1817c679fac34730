"""Relay benchmark: throughput, fan-out latency, relay CPU per edit, peak RSS, late joiner.

    python bench/relay.py [--clients 10] [--writes 2000] [--late 100000,1000000] [--json]

* N raw replicas (real websockets to a real ``crdtstate-relay`` subprocess) each send M
  small signed writes (window of 64 unacknowledged) to one namespace; every replica receives
  every other's broadcasts. Reported: updates/s until all converged, fan-out latency p50/p99
  (send at the writer -> broadcast received at another replica, one clock), relay CPU per
  update (/proc utime+stime), relay peak RSS (VmHWM).
* Late joiner: a namespace with K updates (stored as a relay snapshot, as the periodic
  snapshot policy would leave it); time from connect to a fresh doc holding the state,
  cold (relay loads the namespace) and warm.

Updates are signed before the clock starts, so the client process spends its time on the
network, not on ed25519.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from pycrdt import Doc, Map

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT))

from relay_helpers import DocTarget, RelayProcess, hello_for, signed_update  # noqa: E402

from crdtstate._ids import Namespace, Seq  # noqa: E402
from crdtstate.sync import wire  # noqa: E402
from relay.backend.base import StoredSnapshot  # noqa: E402
from relay.backend.sqlite import SqliteBackend  # noqa: E402

WINDOW = 64


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _writer_reader(
    session: aiohttp.ClientSession,
    url: str,
    target: DocTarget,
    frames: list[bytes],
    total: int,
    sent_at: dict[tuple[str, int], float],
    op_seq: dict[tuple[str, int], int],
    seen_at: dict[int, list[float]],
    ready: asyncio.Barrier,
) -> None:
    ws = await session.ws_connect(f"{url}/yjs/bench", max_msg_size=0)
    await ws.send_bytes(wire.encode(hello_for(target)))
    while not isinstance(wire.decode((await ws.receive()).data), wire.Welcome):
        pass
    await ready.wait()
    me = str(target.replica_id)
    acked = 0
    next_frame = 0
    seen = 0
    own = len(frames)
    others = total - own
    while acked < own or seen < others:
        while next_frame < own and next_frame - acked < WINDOW:
            sent_at[(me, next_frame + 1)] = time.perf_counter()
            await ws.send_bytes(frames[next_frame])
            next_frame += 1
        msg = await ws.receive(timeout=120)
        now = time.perf_counter()
        frame = wire.decode(msg.data)
        if isinstance(frame, wire.Ack):
            acked += 1
            op_seq[(me, frame.op_id)] = frame.seq
        elif isinstance(frame, wire.Broadcast | wire.BroadcastBatch):
            entries = frame.entries if isinstance(frame, wire.BroadcastBatch) else (frame,)
            for entry in entries:
                seen_at.setdefault(entry.seq, []).append(now)
            seen += len(entries)
    await ws.close()


async def throughput(
    relay: RelayProcess, clients: int, writes: int, signed: bool = True
) -> dict[str, Any]:
    targets = [DocTarget("bench", f"c{i}") for i in range(clients)]
    frames: list[list[bytes]] = []
    for t in targets:
        own = []
        for i in range(writes):
            op = t.write(f"{t.replica_id}", i)  # one hot key per writer: small LWW writes
            update = t.outbox[op].update
            frame = signed_update(t, op, update) if signed else wire.Update(op, b"", update)
            own.append(wire.encode(frame))
        frames.append(own)
    sent_at: dict[tuple[str, int], float] = {}
    op_seq: dict[tuple[str, int], int] = {}
    seen_at: dict[int, list[float]] = {}
    ready = asyncio.Barrier(clients + 1)
    total = clients * writes
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [
            asyncio.create_task(
                _writer_reader(session, relay.url, t, f, total, sent_at, op_seq, seen_at, ready)
            )
            for t, f in zip(targets, frames, strict=True)
        ]
        await ready.wait()
        cpu0 = _cpu_s(relay.pid)
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        cpu = _cpu_s(relay.pid) - cpu0
    seq_sent = {seq: sent_at[key] for key, seq in op_seq.items()}
    latencies = sorted((t - seq_sent[seq]) * 1000 for seq, times in seen_at.items() for t in times)
    return {
        "signed": signed,
        "clients": clients,
        "writes_per_client": writes,
        "updates": total,
        "seconds": round(elapsed, 3),
        "updates_per_s": round(total / elapsed),
        "fanout_ms_p50": round(statistics.median(latencies), 2),
        "fanout_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "relay_cpu_us_per_update": round(cpu / total * 1e6, 1),
        "relay_peak_rss_mib": round(_hwm_mib(relay.pid), 1),
    }


async def _prepare_late(data_dir: Path, updates: int) -> int:
    doc: Doc[Any] = Doc()
    m = doc.get("m", type=Map)
    for i in range(updates):
        with doc.transaction():
            m[f"k{i % 1000}"] = i
    state = doc.get_update()
    backend = SqliteBackend(data_dir / "relay.sqlite3")
    await backend.open()
    name = Namespace(f"late{updates}")
    await backend.open_namespace(name)
    await backend.write_snapshot(name, StoredSnapshot(Seq(updates), state))
    await backend.close()
    return len(state)


async def _join(relay: RelayProcess, name: str) -> float:
    started = time.perf_counter()
    joiner = DocTarget(name, f"joiner-{time.monotonic_ns()}")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{relay.url}/yjs/{name}", max_msg_size=0)
        await ws.send_bytes(wire.encode(hello_for(joiner)))
        while True:
            frame = wire.decode((await ws.receive(timeout=120)).data)
            if isinstance(frame, wire.Snapshot):
                joiner.apply_remote(frame.update, frame.seq)
                break
        await ws.close()
    return time.perf_counter() - started


async def late_joiner(base: Path, sizes: list[int]) -> list[dict[str, Any]]:
    results = []
    for updates in sizes:
        data = base / f"late-{updates}"
        prep0 = time.perf_counter()
        state_bytes = await _prepare_late(data, updates)
        prep = time.perf_counter() - prep0
        relay = RelayProcess(data).start()
        try:
            cold = await _join(relay, f"late{updates}")
            warm = await _join(relay, f"late{updates}")
        finally:
            relay.kill()
        results.append(
            {
                "updates": updates,
                "state_bytes": state_bytes,
                "cold_s": round(cold, 3),
                "warm_s": round(warm, 3),
                "prepare_s": round(prep, 1),
            }
        )
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--late", default="100000", help="comma-separated update counts")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--unsigned", action="store_true", help="send unsigned updates (open dev relay)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        relay = RelayProcess(Path(tmp) / "tp").start()
        try:
            tp = await throughput(relay, args.clients, args.writes, not args.unsigned)
        finally:
            relay.kill()
        sizes = [int(x) for x in args.late.split(",") if x]
        late = await late_joiner(Path(tmp), sizes)
    report = {"throughput": tp, "late_joiner": late}
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in tp.items():
            print(f"{key:>26}: {value}")
        for row in late:
            print(
                f"late joiner {row['updates']:>8} updates ({row['state_bytes']} B state): "
                f"cold {row['cold_s']} s, warm {row['warm_s']} s"
            )


if __name__ == "__main__":
    asyncio.run(main())
