"""The chaos cluster: a relay and N replica workers, each behind its own fault proxy.

Why this shape: in crdtstate every replica talks only to the relay (a star), so one proxy per
spoke is enough to cut, slow or blackhole any replica or group, in either direction, while
the relay and the other spokes stay untouched. Every process is real (a relay process, one
:mod:`chaos.node` worker per replica) and every port is an OS-picked loopback port.

Lifecycle: :meth:`Cluster.start` (or ``with Cluster(...) as cluster``) brings up the proxy
server, the relay and the workers; :meth:`Cluster.stop` takes everything down by pid,
whatever state it is in, and runs again at interpreter exit for a cluster left running
(every child process is also reaped by :mod:`chaos.procs`). Layout of ``workdir``:
``data/<node>``, ``relay/``, ``histories/<node>.jsonl``, ``logs/``.

Also: quiescence (:meth:`Cluster.wait_converged`, the time to converge after heal), final reads
of every worker plus a late-joining observer that reads what the relay holds.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import os
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from chaos.faultproxy.testing import free_port
from chaos.history import Event, read_history
from chaos.nodeproc import NodeError, NodeOptions, NodeProcess
from chaos.procs import RelayProcess
from chaos.proxyapi import ProxyApi, ProxyApiError, ProxyMode, ProxyServer, start_proxy_server
from crdtstate.statevector import decode_state_vector

_ids = itertools.count(1)

OBSERVER = "late-joiner"
"""Name of the late joiner whose final read stands for the relay's state."""


class ConvergenceTimeout(RuntimeError):
    """The replicas did not converge within the bound; ``statuses`` says where they were."""

    def __init__(self, message: str, statuses: dict[str, Any]) -> None:
        super().__init__(message)
        self.statuses = statuses


@dataclass(slots=True)
class ClusterConfig:
    """Size and settings of a cluster.

    Attributes:
        replicas: number of replica workers (``r1`` .. ``rN``).
        node: how each worker runs (schema, workload, rate, durability, sync tuning).
        proxy_mode: ``thread``, ``process`` or ``external`` (``$TOXIPROXY_URL``);
            None = external when ``$TOXIPROXY_URL`` is set, else thread.
        relay_config: optional ``relay.toml`` text.
    """

    replicas: int = 3
    node: NodeOptions = field(default_factory=NodeOptions)
    proxy_mode: ProxyMode | None = None
    relay_config: str | None = None


_running: weakref.WeakSet[Cluster] = weakref.WeakSet()


@atexit.register
def _stop_running_clusters() -> None:
    """At interpreter exit, stop every cluster still running (proxies on a shared
    toxiproxy-server included; the processes are also reaped by :mod:`chaos.procs`)."""
    for cluster in list(_running):
        with contextlib.suppress(Exception):
            cluster.stop()


class Cluster:
    """A relay, a proxy per replica and the replica workers.

    Args:
        workdir: directory for data, histories and logs (kept after stop, for replay).
        config: cluster settings.
    """

    def __init__(self, workdir: Path, config: ClusterConfig | None = None) -> None:
        self.workdir = Path(workdir)
        self.config = config or ClusterConfig()
        self.t0 = time.time()
        self.prefix = f"crdtchaos-{os.getpid()}-{next(_ids)}-"
        self.proxy_server: ProxyServer | None = None
        self.api: ProxyApi | None = None
        self.relay = RelayProcess(
            self.workdir / "relay",
            self.workdir / "logs" / "relay.log",
            config_path=self._relay_config_path(),
        )
        self.nodes: dict[str, NodeProcess] = {}
        self.proxies: dict[str, str] = {}
        self._started = False

    def _relay_config_path(self) -> Path | None:
        if self.config.relay_config is None:
            return None
        path = self.workdir / "relay.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.config.relay_config, encoding="utf-8")
        return path

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, *, paused: bool = False) -> Cluster:
        """Start the proxy server, the relay and every worker (writers paused if asked)."""
        for sub in ("logs", "histories", "data"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self._started = True
        _running.add(self)
        try:
            # every interpreter starts at once: the relay on a port picked now, the proxies
            # pointing at it already, the workers retrying until it listens
            self.relay.port = free_port()
            self.proxy_server = start_proxy_server(self.config.proxy_mode, self.config.node.seed)
            self.api = ProxyApi(self.proxy_server.url)
            self.relay.launch()
            for index in range(1, self.config.replicas + 1):
                self.add_node(f"r{index}", start=False)
            for node in self.nodes.values():
                node.launch(paused=paused)
            try:
                self.relay.wait_ready()
            except RuntimeError:  # the port was taken in between: any port will do
                self.relay.port = 0
                self.restart_relay()
            for node in self.nodes.values():
                node.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(
        self, name: str, *, start: bool = True, options: NodeOptions | None = None
    ) -> NodeProcess:
        """Create a proxy for ``name`` (upstream: the relay) and a worker behind it."""
        if name in self.nodes or name == OBSERVER:
            raise ValueError(f"node name {name!r} is taken")
        proxy = self.proxy_for(name)
        node = NodeProcess(
            name, self.workdir, f"ws://127.0.0.1:{proxy}", options or self.config.node, self.t0
        )
        self.nodes[name] = node
        if start:
            node.start()
        return node

    def proxy_for(self, name: str) -> int:
        """Create (once) the proxy of spoke ``name``; returns its listen port."""
        api = self.require_api()
        if name in self.proxies:
            return api.get(self.proxies[name]).port
        proxy_name = f"{self.prefix}{name}"
        info = api.create(proxy_name, self.relay.address)
        self.proxies[name] = proxy_name
        return info.port

    def restart_relay(self) -> None:
        """Start the relay again on its data directory, on the same port if it can; if it
        had to move, every spoke's proxy follows it."""
        before = self.relay.address
        try:
            self.relay.start()
        except RuntimeError:
            if self.relay.port == 0:
                raise
            self.relay.port = 0
            self.relay.start()
        if self.relay.address != before and self.api is not None:
            for proxy_name in self.proxies.values():
                self.api.set_upstream(proxy_name, self.relay.address)

    def require_api(self) -> ProxyApi:
        """The proxy API (the cluster must be started)."""
        if self.api is None:
            raise RuntimeError("the cluster is not started")
        return self.api

    def stop(self) -> None:
        """Stop everything this cluster started, by pid. Safe to call more than once."""
        if not self._started:
            return
        self._started = False
        _running.discard(self)
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop(timeout_s=5.0)
        with contextlib.suppress(Exception):
            self.relay.stop()
        if self.api is not None:
            for proxy_name in self.proxies.values():
                with contextlib.suppress(ProxyApiError):
                    self.api.delete(proxy_name)
        if self.proxy_server is not None:
            with contextlib.suppress(Exception):
                self.proxy_server.stop()
            self.proxy_server = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def now(self) -> float:
        """Seconds since the cluster was created (the histories' time axis)."""
        return time.time() - self.t0

    # -- observation -----------------------------------------------------------------------

    def live_nodes(self) -> list[NodeProcess]:
        """Workers running and not SIGSTOPped."""
        return [n for n in self.nodes.values() if n.alive and not n.stopped_by_signal]

    def statuses(self, timeout_s: float = 5.0) -> dict[str, dict[str, Any]]:
        """Status of every live worker (a worker that does not answer is left out)."""
        out: dict[str, dict[str, Any]] = {}
        for node in self.live_nodes():
            with contextlib.suppress(NodeError):
                out[node.name] = node.status(timeout_s=timeout_s)
        return out

    def pause_writes(self) -> None:
        """Stop every live worker's workload."""
        for node in self.live_nodes():
            node.pause_writes()

    def resume_writes(self) -> None:
        """Restart every live worker's workload."""
        for node in self.live_nodes():
            node.resume_writes()

    def wait_converged(
        self, timeout_s: float = 30.0, nodes: list[str] | None = None, interval_s: float = 0.1
    ) -> float:
        """Poll until the given workers (default: all) agree; returns the seconds it took.

        Agreement: equal digests, equal decoded state vectors and empty outboxes.

        Raises:
            ConvergenceTimeout: not reached within ``timeout_s`` (with the last statuses).
        """
        names = nodes if nodes is not None else list(self.nodes)
        started = time.monotonic()
        statuses: dict[str, Any] = {}
        polls = 0
        while True:
            polls += 1
            statuses = {}
            for name in names:
                with contextlib.suppress(NodeError):
                    statuses[name] = self.nodes[name].status(timeout_s=5.0)
            if len(statuses) == len(names) and _agree(list(statuses.values())):
                return time.monotonic() - started
            elapsed = time.monotonic() - started
            if elapsed >= timeout_s or polls > 100_000:
                summary = {
                    n: {k: s.get(k) for k in ("digest", "applied_seq", "outbox", "sync_state")}
                    for n, s in statuses.items()
                }
                raise ConvergenceTimeout(
                    f"no convergence of {names} within {timeout_s} s: {summary}", statuses
                )
            time.sleep(interval_s)

    def observe(self, timeout_s: float = 30.0) -> tuple[NodeProcess, float]:
        """Start a late joiner on a fresh store, straight to the relay, and wait until it
        holds what the workers hold; returns it and how long that took.

        Its read stands for the relay's state in the final reads (C1 includes the relay).
        """
        options = dataclasses.replace(self.config.node, workload=False)
        observer = NodeProcess(OBSERVER, self.workdir, self.relay.url, options, self.t0)
        self.nodes[OBSERVER] = observer
        started = time.monotonic()
        observer.start()
        self.wait_converged(timeout_s, interval_s=0.1)
        return observer, time.monotonic() - started

    def final_reads(self) -> list[dict[str, Any]]:
        """A final read of every live worker (recorded in each history)."""
        return [node.read("final") for node in self.live_nodes()]

    def history_paths(self) -> list[Path]:
        """Every worker's history file."""
        return [node.history_path for node in self.nodes.values()]

    def history(self) -> list[Event]:
        """All workers' histories, concatenated (each in its own order)."""
        events: list[Event] = []
        for path in self.history_paths():
            if path.exists():
                events.extend(read_history(path))
        return events


def _agree(statuses: list[dict[str, Any]]) -> bool:
    if not statuses:
        return False
    first = statuses[0]
    try:
        first_sv = decode_state_vector(bytes.fromhex(str(first["state_vector"])))
        for status in statuses:
            if status.get("outbox"):
                return False
            if status.get("digest") != first.get("digest"):
                return False
            if decode_state_vector(bytes.fromhex(str(status["state_vector"]))) != first_sv:
                return False
    except (KeyError, ValueError):
        return False
    return True
