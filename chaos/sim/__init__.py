"""Deterministic simulation of replicas, relay and network in one process.

``crdtstate-chaos simulate`` runs thousands of seeds; each seed builds a world from the
production code (replicas, sync sessions, the relay's hub and sequencer) over simulated
storage, network and time, runs a random schedule of writes and faults, heals, and checks
the outcome with the chaos checkers. See ``docs/simulation.md``.
"""

from chaos.sim.world import SeedResult, SimConfig, run_seed

__all__ = ["SeedResult", "SimConfig", "run_seed"]
