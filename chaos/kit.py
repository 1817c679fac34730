"""``ChaosKit``: a relay, a fault proxy, replicas of *your* schema and the nemesis verbs, for
your own tests (the pytest plugin's ``chaos_cluster`` fixture is one of these).

Why a kit next to the cluster: an agent developer wants to write ordinary test code against
ordinary :class:`~crdtstate.Replica` objects of their schema — write, cut the network, write
on both sides, heal, assert that everything converged — without writing a workload or a
history. So the kit gives two kinds of replicas, both behind their own proxy:

- :meth:`ChaosKit.replicas`: in-process replicas (the real sync client and store), for the
  common case; ``restart`` closes and reopens one from its store.
- :meth:`ChaosKit.spawn`: replicas in worker processes (:mod:`chaos.node`), driven with
  :meth:`NodeProcess.call`, for faults only a process can have: kill -9, SIGSTOP.

Verbs (by replica object, worker or name): :meth:`partition`, :meth:`heal`, :meth:`latency`,
:meth:`kill`, :meth:`restart`, :meth:`pause`, :meth:`resume`, :meth:`skew`, and
:meth:`wait_converged`. Every verb lands in :attr:`schedule`, printed when a test fails.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from chaos.cluster import Cluster, ClusterConfig
from chaos.nemesis import Direction, FaultRecord, Nemesis
from chaos.nodeproc import NodeError, NodeOptions, NodeProcess
from chaos.procs import RelayProcess
from chaos.proxyapi import ProxyApi, ProxyMode
from crdtstate import HybridClock, Replica, Schema
from crdtstate.statevector import decode_state_vector
from crdtstate.sync.session import SyncSettings

S = TypeVar("S", bound=Schema)

Target = Any
"""A replica (in-process), a :class:`NodeProcess`, a name, or ``"relay"``."""


def fast_sync_settings() -> SyncSettings:
    """Sync tuning for tests: a dead link is noticed in about 2 s and reconnects back off
    to at most 2 s, so convergence after heal fits a test's time budget (production
    defaults: 20 s and 10 s)."""
    return SyncSettings(
        heartbeat_interval_s=1.0, ws_heartbeat_s=2.0, backoff_s_max=2.0, connect_timeout_s=3.0
    )


class ChaosKit:
    """A relay behind per-replica fault proxies, replicas of any schema, and fault verbs.

    Args:
        workdir: where the relay, the replicas' stores and the logs live.
        seed: seed of the nemesis's random choices (and of the fault proxy).
        proxy_mode: see :func:`chaos.proxyapi.start_proxy_server`.
    """

    def __init__(self, workdir: Path, seed: int = 0, proxy_mode: ProxyMode | None = None) -> None:
        self.workdir = Path(workdir)
        self.seed = seed
        options = NodeOptions(seed=seed, workload=False)
        self.cluster = Cluster(
            self.workdir, ClusterConfig(replicas=0, node=options, proxy_mode=proxy_mode)
        )
        self.nemesis = Nemesis(self.cluster, random.Random(seed))
        self.local: dict[str, Replica[Any]] = {}
        self._opened: dict[str, dict[str, Any]] = {}
        self._clocks: dict[str, HybridClock] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ChaosKit:
        """Start the fault proxy and the relay."""
        self.cluster.start()
        return self

    def close(self) -> None:
        """Close every replica and stop every process (by pid) and proxy."""
        for replica in self.local.values():
            try:
                replica.close()
            except Exception:  # teardown goes on: the processes must still be stopped
                continue
        self.local.clear()
        self.cluster.stop()

    def __enter__(self) -> ChaosKit:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def relay(self) -> RelayProcess:
        """The relay process (``.url``, ``.pid``, ``.data_dir``)."""
        return self.cluster.relay

    @property
    def proxy(self) -> ProxyApi:
        """The Toxiproxy API of the fault proxy, for faults beyond the verbs."""
        return self.cluster.require_api()

    @property
    def schedule(self) -> list[FaultRecord]:
        """Every verb applied so far."""
        return self.nemesis.schedule

    # -- replicas --------------------------------------------------------------------------

    def replicas(
        self,
        schema: type[S],
        n: int = 3,
        *,
        namespace: str = "test",
        durability: str = "sync",
        names: list[str] | None = None,
    ) -> list[Replica[S]]:
        """Open ``n`` in-process replicas of ``schema``, each syncing through its own proxy."""
        chosen = names or self._fresh_names(n)
        return [self._open_local(name, schema, namespace, durability) for name in chosen]

    def _fresh_names(self, n: int) -> list[str]:
        taken = set(self.cluster.proxies) | set(self.cluster.nodes)
        names: list[str] = []
        index = 0
        while len(names) < n and index < 10_000:
            index += 1
            if f"r{index}" not in taken:
                names.append(f"r{index}")
        return names

    def _open_local(
        self, name: str, schema: type[S], namespace: str, durability: str
    ) -> Replica[S]:
        port = self.cluster.proxy_for(name)
        clock = self._clocks.setdefault(name, HybridClock())
        replica = Replica.open(
            self.workdir / "data" / name,
            namespace,
            schema,
            durability=durability,
            relay=f"ws://127.0.0.1:{port}",
            clock=clock,
            sync_settings=fast_sync_settings(),
        )
        self.local[name] = replica
        self._opened[name] = {"schema": schema, "namespace": namespace, "durability": durability}
        return replica

    def spawn(
        self,
        schema: str,
        n: int = 1,
        *,
        namespace: str = "test",
        durability: str = "sync",
        env: dict[str, str] | None = None,
    ) -> list[NodeProcess]:
        """Start ``n`` replica worker processes of ``schema`` (``"package.module:Class"``,
        importable by a fresh interpreter: set ``PYTHONPATH`` in ``env`` if needed), each
        through its own proxy."""
        options = dataclasses.replace(
            self.cluster.config.node,
            schema=schema,
            namespace=namespace,
            durability=durability,
            extra_env=dict(env or {}),
        )
        nodes = [
            self.cluster.add_node(name, start=False, options=options)
            for name in self._fresh_names(n)
        ]
        for node in nodes:
            node.launch()
        for node in nodes:
            node.wait_ready()
        return nodes

    def name_of(self, target: Target) -> str:
        """The spoke name of a replica, worker or name."""
        if isinstance(target, str):
            return target
        if isinstance(target, NodeProcess):
            return target.name
        for name, replica in self.local.items():
            if replica is target:
                return name
        raise ValueError(f"{target!r} is not a replica of this kit")

    def _names(self, targets: tuple[Target, ...]) -> list[str]:
        return [self.name_of(t) for t in targets] if targets else list(self.cluster.proxies)

    # -- verbs -----------------------------------------------------------------------------

    def partition(self, *targets: Target, direction: Direction = "both", how: str = "cut") -> None:
        """Cut these replicas (default: all) from the relay: ``how`` ``cut`` drops the
        connections and refuses reconnects; ``blackhole`` keeps them up and silent (the only
        way to cut one ``direction``: ``to-relay`` or ``from-relay``)."""
        self.nemesis.partition(self._names(targets), how, direction)

    def heal(self, *targets: Target) -> None:
        """Remove every network fault of these replicas (default: all)."""
        self.nemesis.heal(self._names(targets))

    def latency(self, *targets: Target, ms: int = 200, jitter_ms: int = 50) -> None:
        """Delay these replicas' traffic (default: all)."""
        self.nemesis.latency(self._names(targets), ms, jitter_ms)

    def kill(self, target: Target) -> None:
        """kill -9 a worker process, or the relay (``"relay"``)."""
        name = self.name_of(target)
        if name == "relay":
            self.nemesis.kill_relay()
        elif name in self.cluster.nodes:
            self.nemesis.kill_replica(name)
        else:
            raise ValueError(f"{name} runs in this process: spawn() replicas to kill -9 them")

    def restart(self, target: Target) -> Any:
        """Restart the relay, a killed worker, or an in-process replica (closed, then
        reopened from its store); returns the new replica object for the latter."""
        name = self.name_of(target)
        if name == "relay":
            self.nemesis.restart_relay()
            return self.relay
        if name in self.cluster.nodes:
            node = self.cluster.nodes[name]
            if node.alive:
                node.stop()
            self.nemesis.restart_replica(name)
            return node
        self.local.pop(name).close()
        opened = self._opened[name]
        self.nemesis.record("restart", [name])
        return self._open_local(name, opened["schema"], opened["namespace"], opened["durability"])

    def pause(self, target: Target) -> None:
        """SIGSTOP a worker process."""
        self.nemesis.pause(self.name_of(target))

    def resume(self, target: Target) -> None:
        """SIGCONT a worker process."""
        self.nemesis.resume(self.name_of(target))

    def skew(self, target: Target, offset_ms: int) -> None:
        """Offset a replica's HLC wall clock by ``offset_ms`` (0 resets it)."""
        name = self.name_of(target)
        if name in self.cluster.nodes:
            self.nemesis.skew(name, offset_ms)
            return
        self._clocks[name].offset_ms = int(offset_ms)
        self.nemesis.record("skew", [name], offset_ms=offset_ms)

    # -- convergence -----------------------------------------------------------------------

    def states(self) -> dict[str, dict[str, Any]]:
        """Digest, state vector and outbox of every replica and live worker."""
        out: dict[str, dict[str, Any]] = {}
        for name, replica in self.local.items():
            out[name] = {
                "digest": replica.digest(),
                "state_vector": replica.state_vector().hex(),
                "outbox": replica.outbox_len(),
            }
        for node in self.cluster.live_nodes():
            try:
                out[node.name] = node.status(timeout_s=5.0)
            except NodeError as exc:
                out[node.name] = {"error": str(exc)}
        return out

    def wait_converged(self, timeout_s: float = 30.0) -> float:
        """Wait until every replica and live worker holds the same state with nothing left to
        send; returns the seconds it took.

        Raises:
            AssertionError: not converged within ``timeout_s`` (with every replica's state,
                the seed and the fault schedule).
        """
        started = time.monotonic()
        states: dict[str, dict[str, Any]] = {}
        for _ in range(100_000):
            states = self.states()
            if _converged(list(states.values())):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                break
            time.sleep(0.05)
        lines = [f"  {name}: {state}" for name, state in sorted(states.items())]
        lines += [f"  {record}" for record in self.schedule]
        raise AssertionError(
            f"replicas did not converge within {timeout_s} s (seed {self.seed}):\n"
            + "\n".join(lines)
        )


def _converged(states: list[dict[str, Any]]) -> bool:
    if not states or any("error" in s or s.get("outbox") for s in states):
        return False
    digests = {s.get("digest") for s in states}
    vectors = [decode_state_vector(bytes.fromhex(str(s["state_vector"]))) for s in states]
    return len(digests) == 1 and all(v == vectors[0] for v in vectors)
