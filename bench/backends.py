"""Storage backend benchmark: the SQLite and NATS JetStream backends, same workload, one table.

    python bench/backends.py [--entries 20000] [--size 100] [--repeat 3] [--nats URL] [--relay]
                             [--json]

Measured through the :class:`relay.backend.base.Backend` interface only, the way the relay's
sequencer and namespace loader call it:

* ``append 1/call``: one entry per append, awaited one after another — an idle namespace,
  where each accepted update is committed at once (latency bound: one fsync or one round trip);
* ``append 256/call``: group commit under load (the sequencer batches what queued up);
* ``resend 256/call``: the same ops again, all answered as duplicates with their original seq
  (NATS: from the backend's memory of recent ops);
* ``resend, new proc``: the same through a fresh backend object, as after a relay restart
  (NATS: the server refuses each op, the backend reads its seq back);
* ``read_after``: the whole log in chunks of 10000, as a relay loading a namespace does.

SQLite runs twice: ``synchronous=FULL`` (the relay default, fsync per commit) and ``NORMAL``
(survives kill -9, not power loss — the same promise JetStream 2.9's file store makes, since it
writes before acking and fsyncs every two minutes). The ratio column is NATS / SQLite NORMAL.
``--relay`` adds the end-to-end view: ``bench/relay.py``'s throughput run (10 signed writers,
real websockets, one namespace) against a relay process on each backend.

Each figure is the best of ``--repeat`` runs (the machine may be shared). Without ``--nats``
a throwaway ``nats-server -js`` is started on a free loopback port and
stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq  # noqa: E402
from relay.backend.base import Backend, NewEntry  # noqa: E402
from relay.backend.sqlite import SqliteBackend  # noqa: E402

NS = Namespace("bench")
METRICS = (
    "append 1/call",
    "append 256/call",
    "resend 256/call",
    "resend, new proc",
    "read_after",
)


def _entries(count: int, size: int, first_op: int = 1) -> list[NewEntry]:
    body = os.urandom(size)
    return [
        NewEntry(f"r{i % 8}", ReplicaId(f"r{i % 8}"), OpId(first_op + i // 8), body)
        for i in range(count)
    ]


async def _rate(count: int, run: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await run()
    return count / (time.perf_counter() - started)


async def measure(make: Callable[[], Backend], entries: int, size: int) -> dict[str, float]:
    """Entries per second for each metric, on fresh storage made by ``make``."""
    backend = make()
    await backend.open()
    fresh = make()
    try:
        await backend.open_namespace(NS)
        singles = _entries(min(2000, entries // 5), size, first_op=1_000_000)
        batch = _entries(entries, size)

        async def one_by_one() -> None:
            for entry in singles:
                await backend.append(NS, [entry])

        async def batched() -> None:
            for at in range(0, len(batch), 256):
                results = await backend.append(NS, batch[at : at + 256])
                assert not any(r.duplicate for r in results)

        async def resent() -> None:
            for at in range(0, len(batch), 256):
                results = await backend.append(NS, batch[at : at + 256])
                assert all(r.duplicate for r in results)

        async def resent_fresh() -> None:
            await fresh.open()
            await fresh.open_namespace(NS)
            for at in range(0, len(batch), 256):
                results = await fresh.append(NS, batch[at : at + 256])
                assert all(r.duplicate for r in results)

        async def read_all() -> None:
            after, seen = Seq(0), 0
            while chunk := await backend.read_after(NS, after, 10000):
                after, seen = chunk[-1].seq, seen + len(chunk)
            assert seen == len(singles) + len(batch), seen

        return {
            METRICS[0]: await _rate(len(singles), one_by_one),
            METRICS[1]: await _rate(len(batch), batched),
            METRICS[2]: await _rate(len(batch), resent),
            METRICS[3]: await _rate(len(batch), resent_fresh),
            METRICS[4]: await _rate(len(singles) + len(batch), read_all),
        }
    finally:
        await backend.close()
        await fresh.close()


async def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from relay.backend.nats import NatsBackend

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        root = Path(tmp)
        server: Any = None
        url = args.nats
        if url is None:
            from tests.natsserver import NatsServer

            server = NatsServer(root / "js").start()
            url = server.url
        try:
            for run_no in range(args.repeat):
                makers: dict[str, Callable[[], Backend]] = {
                    "sqlite FULL": partial(SqliteBackend, root / f"f{run_no}.db", fsync=True),
                    "sqlite NORMAL": partial(SqliteBackend, root / f"n{run_no}.db", fsync=False),
                    "nats": partial(NatsBackend, url, prefix=f"bench{os.getpid()}-{run_no}"),
                }
                for name, make in makers.items():
                    rates = await measure(make, args.entries, args.size)
                    best = results.setdefault(name, rates)
                    for metric, rate in rates.items():
                        best[metric] = max(best[metric], rate)
        finally:
            if server is not None:
                server.stop()
    return results


async def relay_runs(url: str | None, clients: int, writes: int) -> dict[str, dict[str, Any]]:
    """bench/relay.py's throughput against a relay on SQLite (default) and one on NATS."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_relay", ROOT / "bench" / "relay.py")
    assert spec is not None and spec.loader is not None
    bench_relay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_relay)
    from tests.integration.relay_helpers import RelayProcess

    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-backends-relay-") as tmp:
        root = Path(tmp)
        server: Any = None
        if url is None:
            from tests.natsserver import NatsServer

            server = NatsServer(root / "js", "max_payload: 8MB\n").start()
            url = server.url
        nats_conf = f'[backend]\nkind = "nats"\nurl = "{url}"\nprefix = "r{os.getpid()}"\n'
        try:
            for name, config in (("relay on sqlite", None), ("relay on nats", nats_conf)):
                relay = RelayProcess(root / name.replace(" ", "-"), config).start()
                try:
                    out[name] = await bench_relay.throughput(relay, clients, writes)
                finally:
                    relay.kill()
        finally:
            if server is not None:
                server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=20000, help="entries per batched run")
    parser.add_argument("--size", type=int, default=100, help="bytes per update")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best counts")
    parser.add_argument("--nats", default=None, help="use this NATS server instead")
    parser.add_argument("--relay", action="store_true", help="also run relays end to end")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    relays = asyncio.run(relay_runs(args.nats, 10, 1000)) if args.relay else {}
    if args.json:
        print(json.dumps({"backends": results, "relays": relays}, indent=2))
        return
    names = list(results)
    print(f"{args.size}-byte updates, entries/s (higher is better)\n")
    header = f"{'':18}" + "".join(f"{n:>15}" for n in names) + f"{'nats/NORMAL':>13}"
    print(header)
    print("-" * len(header))
    for metric in METRICS:
        row = "".join(f"{results[n][metric]:>15,.0f}" for n in names)
        ratio = results["nats"][metric] / results["sqlite NORMAL"][metric]
        print(f"{metric:18}{row}{ratio:>12.2f}x")
    if relays:
        keys = ("updates_per_s", "fanout_ms_p50", "fanout_ms_p99", "relay_cpu_us_per_update")
        print(f"\n{'':26}" + "".join(f"{k:>18}" for k in relays) + f"{'nats/sqlite':>13}")
        for key in keys:
            values = [float(relays[k][key]) for k in relays]
            ratio = values[1] / values[0] if values[0] else float("nan")
            print(f"{key:26}" + "".join(f"{v:>18,.1f}" for v in values) + f"{ratio:>12.2f}x")


if __name__ == "__main__":
    main()
