"""Hypothesis fuzz: random and mutated frames hit a running relay while an honest replica
process keeps writing through it. The relay stays up, the honest replica converges, and
/metrics counts the rejects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relay_helpers import (
    DocTarget,
    RawClient,
    RelayProcess,
    hello_for,
    metric_value,
    signed_update,
)

from crdtstate._ids import OpId, ReplicaId, Seq
from crdtstate.sync import wire

TOKEN = "fuzz-write-token"
CONFIG = f"""
[limits]
frame_bytes_max = 65536
update_bytes_max = 16384
errors_per_connection_max = 40

[[tokens]]
token = "{TOKEN}"
access = "write"
"""
NAMESPACE = "fuzz"

_kinds = st.one_of(
    st.tuples(st.just("raw"), st.binary(max_size=300)),
    st.tuples(st.just("prefixed"), st.sampled_from([0, 1, 2, 3, 100]), st.binary(max_size=200)),
    st.tuples(
        st.just("mutate"),
        st.sampled_from(["hello", "update", "heartbeat", "step1", "awareness"]),
        st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
        st.integers(0, 400),
    ),
    st.tuples(st.just("bad_signature"), st.binary(min_size=1, max_size=100)),
    st.tuples(st.just("unsigned"), st.binary(max_size=100)),
    st.tuples(st.just("garbage_signed"), st.binary(max_size=100)),
    st.tuples(
        st.just("replay"),
    ),
    st.tuples(st.just("huge_length"), st.sampled_from([0, 1, 2, 100])),
    st.tuples(
        st.just("oversize"),
    ),
    st.tuples(
        st.just("stolen_id"),
    ),
    st.tuples(st.just("bad_heartbeat"), st.text(max_size=50)),
)


class Fuzzer:
    """One fuzzing replica: its own key, a valid signed update to replay."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.target = DocTarget(NAMESPACE, "fuzzer")
        op = self.target.write("fuzz", "x")
        self.replay = signed_update(self.target, op, self.target.outbox[op].update)
        self.client: RawClient | None = None
        self.next_op = 1000

    async def connect(self) -> RawClient:
        if self.client is not None and self.client.ws is not None and not self.client.ws.closed:
            return self.client
        if self.client is not None:
            await self.client.close()
        self.client = await RawClient.connect(self.url, NAMESPACE, TOKEN)
        await self.client.send(hello_for(self.target))
        return self.client

    def build(self, kind: tuple) -> bytes:  # type: ignore[type-arg]
        t = self.target
        name = kind[0]
        if name == "raw":
            return bytes(kind[1]) or b"\x07"
        if name == "prefixed":
            return bytes([kind[1]]) + kind[2]
        if name == "mutate":
            base = {
                "hello": wire.encode(hello_for(t)),
                "update": wire.encode(self.replay),
                "heartbeat": wire.encode(wire.Heartbeat('{"applied_seq": 1}')),
                "step1": wire.encode(wire.SyncStep1(t.state_vector())),
                "awareness": wire.encode(
                    wire.Awareness(wire.encode_awareness_update([wire.AwarenessEntry(5, 1, "{}")]))
                ),
            }[kind[1]]
            data = bytearray(base)
            for pos, value in kind[2]:
                if data:
                    data[pos % len(data)] = value
            cut = kind[3] % (len(data) + 1)
            return bytes(data[: max(1, cut)]) if kind[3] % 2 else bytes(data)
        self.next_op += 1
        op = self.next_op
        if name == "bad_signature":
            return wire.encode(wire.Update(OpId(op), bytes(64), kind[1]))
        if name == "unsigned":
            return wire.encode(wire.Update(OpId(op), b"", kind[1]))
        if name == "garbage_signed":
            return wire.encode(signed_update(t, op, kind[1]))
        if name == "replay":
            return wire.encode(self.replay)
        if name == "huge_length":
            # A length prefix claiming ~2**49 bytes.
            return bytes([100, 2, kind[1] & 0x7F]) + b"\xff\xff\xff\xff\xff\xff\x7f" + b"ab"
        if name == "oversize":
            return wire.encode(wire.SyncUpdate(b"\x00" * 70000))
        if name == "stolen_id":
            other = DocTarget(NAMESPACE, "honest-writer")
            return wire.encode(
                wire.Hello(
                    1, ReplicaId("honest-writer"), other.public_key, Seq(0), b"\x00", "", "x"
                )
            )
        if name == "bad_heartbeat":
            return wire.encode(wire.Heartbeat(kind[1]))
        raise AssertionError(name)

    async def run(self, kinds: list[tuple]) -> None:  # type: ignore[type-arg]
        for kind in kinds:
            client = await self.connect()
            try:
                await client.send(self.build(kind))
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                continue
        # Read what the relay answered (broadcasts keep coming: bounded in time).
        if self.client is not None:
            deadline = time.monotonic() + 0.1
            with contextlib.suppress(TimeoutError):
                while time.monotonic() < deadline:
                    if await self.client.recv(max(0.001, deadline - time.monotonic())) is None:
                        break


def test_fuzzed_frames_never_disturb_the_relay_or_an_honest_replica(
    tmp_path: Path,
) -> None:
    relay = RelayProcess(tmp_path / "data", CONFIG).start()
    stop_file = tmp_path / "stop"
    out_file = tmp_path / "honest.json"
    honest = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("relay_helpers.py")),
            "honest",
            relay.url,
            NAMESPACE,
            TOKEN,
            str(stop_file),
            str(out_file),
        ],
        cwd=Path(__file__).parents[2],
    )
    loop = asyncio.new_event_loop()
    fuzzer = Fuzzer(relay.url)
    try:

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            database=None,
        )
        @given(st.lists(_kinds, min_size=1, max_size=12))
        def fuzz(kinds: list[tuple]) -> None:  # type: ignore[type-arg]
            loop.run_until_complete(fuzzer.run(kinds))
            assert relay.alive(), relay.log_tail()

        fuzz()
        stop_file.write_text("stop")
        assert honest.wait(timeout=90) == 0
        report = json.loads(out_file.read_text())
        assert "failure" not in report, report
        assert report["outbox"] == 0 and report["acked"] == report["written"], report
        assert report["equal"] and report["keys"] == report["written"], report
        status, _ = relay.http("GET", "/healthz")
        assert status == 200
        text = relay.metrics()
        rejected = sum(
            metric_value(text, "crdtstate_relay_rejects_total", f'reason="{r}"')
            for r in ("malformed", "unknown_type", "bad_signature", "missing_signature")
        )
        assert rejected > 0
        assert metric_value(text, "crdtstate_relay_rejects_total", 'reason="bad_signature"') > 0
    finally:
        if fuzzer.client is not None:
            loop.run_until_complete(fuzzer.client.close())
        loop.close()
        if honest.poll() is None:
            honest.kill()
            honest.wait(timeout=10)
        relay.kill()
