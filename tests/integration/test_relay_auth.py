"""Tokens, key binding, signatures and takeovers against a real relay with a config file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from relay_helpers import (
    DocTarget,
    RawClient,
    RelayProcess,
    connect_replica,
    hello_for,
    metric_value,
    signed_update,
)

from crdtstate._ids import OpId
from crdtstate.sync import wire

CONFIG = """
[[tokens]]
token = "writer-token-1"
access = "write"
namespaces = ["team-*"]

[[tokens]]
token = "reader-token-1"
access = "read"

[[tokens]]
token_env = "EXTRA_TOKEN"
access = "write"
namespaces = ["open-*"]

[namespaces."open-*"]
require_signatures = false
"""

W = "writer-token-1"
R = "reader-token-1"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One relay with tokens for the whole module (the tests use distinct namespaces)."""
    data: Path = tmp_path_factory.mktemp("secured") / "data"
    process = RelayProcess(data, CONFIG, env={"EXTRA_TOKEN": "extra-token-9"})
    process.start()
    try:
        yield process
    finally:
        process.kill()


async def _first_close(client: RawClient) -> tuple[int | None, list[wire.Frame]]:
    frames = []
    while True:
        frame = await client.recv(10)
        if frame is None:
            return client.close_code, frames
        frames.append(frame)


@pytest.mark.parametrize("token", [None, "wrong-token-xx", "writer-token-1x"])
async def test_connection_without_a_valid_token_is_closed_with_4001(
    secured: RelayProcess, token: str | None
) -> None:
    client = await RawClient.connect(secured.url, "team-a", token)
    try:
        code, frames = await _first_close(client)
        assert code == wire.CloseCode.UNAUTHORIZED
        assert any(isinstance(f, wire.AuthDenied) for f in frames)
    finally:
        await client.close()


async def test_token_outside_its_namespaces_is_refused(secured: RelayProcess) -> None:
    client = await RawClient.connect(secured.url, "other-ns", W)
    try:
        assert (await _first_close(client))[0] == wire.CloseCode.UNAUTHORIZED
    finally:
        await client.close()


async def test_read_only_token_reads_but_a_write_is_refused_with_4003(
    secured: RelayProcess,
) -> None:
    reader = DocTarget("team-ro", "reader")
    client, welcome, _ = await connect_replica(secured.url, reader, R)
    try:
        assert welcome.head_seq == 0
        op = reader.write("x", 1)
        await client.send(signed_update(reader, op, reader.outbox[op].update))
        code, frames = await _first_close(client)
        assert code == wire.CloseCode.FORBIDDEN
        errors = [f for f in frames if isinstance(f, wire.ErrorFrame)]
        assert errors and errors[0].code == wire.ErrorCode.FORBIDDEN and errors[0].op_id == op
        assert metric_value(
            secured.metrics(), "crdtstate_relay_rejects_total", 'reason="forbidden"'
        )
    finally:
        await client.close()


async def test_bearer_header_token_is_accepted(secured: RelayProcess) -> None:
    target = DocTarget("team-hdr", "h")
    client = await RawClient.connect(secured.url, "team-hdr", W, header=True)
    try:
        await client.send(hello_for(target))
        frame, _ = await client.recv_until(lambda f: isinstance(f, wire.Welcome))
        assert isinstance(frame, wire.Welcome)
    finally:
        await client.close()


async def test_a_second_key_for_a_bound_replica_id_is_refused_with_4009(
    secured: RelayProcess,
) -> None:
    first = DocTarget("team-keys", "same-id")
    client, _, _ = await connect_replica(secured.url, first, W)
    await client.close()
    impostor = DocTarget("team-keys", "same-id")  # same id, fresh key
    other = await RawClient.connect(secured.url, "team-keys", W)
    try:
        await other.send(hello_for(impostor))
        code, frames = await _first_close(other)
        assert code == wire.CloseCode.IDENTITY_CONFLICT
        assert any(
            isinstance(f, wire.ErrorFrame) and f.code == wire.ErrorCode.IDENTITY_CONFLICT
            for f in frames
        )
    finally:
        await other.close()


async def test_wrong_and_missing_signatures_get_error_frames_and_are_never_sequenced(
    secured: RelayProcess,
) -> None:
    a, b = DocTarget("team-sig", "a"), DocTarget("team-sig", "b")
    ca, _, _ = await connect_replica(secured.url, a, W)
    cb, _, _ = await connect_replica(secured.url, b, W)
    try:
        op = a.write("bad", 1)
        update = a.outbox[op].update
        forged = signed_update(b, op, update)  # signed by b's key, sent as a
        await ca.send(wire.Update(OpId(op), forged.signature, update))
        err, _ = await ca.recv_until(lambda f: isinstance(f, wire.ErrorFrame))
        assert isinstance(err, wire.ErrorFrame)
        assert (err.code, err.op_id) == (wire.ErrorCode.BAD_SIGNATURE, op)
        # Signature over another namespace's payload: also bad.
        payload = wire.signing_payload("team-other", a.replica_id, op, update)
        await ca.send(wire.Update(OpId(op), a.sign(payload), update))
        err, _ = await ca.recv_until(lambda f: isinstance(f, wire.ErrorFrame))
        assert isinstance(err, wire.ErrorFrame) and err.code == wire.ErrorCode.BAD_SIGNATURE
        await ca.send(wire.Update(OpId(op), b"", update))
        err, _ = await ca.recv_until(lambda f: isinstance(f, wire.ErrorFrame))
        assert isinstance(err, wire.ErrorFrame) and err.code == wire.ErrorCode.MISSING_SIGNATURE
        # The connection is kept: a correctly signed resend is sequenced as seq 1.
        await ca.send(signed_update(a, op, update))
        ack, _ = await ca.recv_until(lambda f: isinstance(f, wire.Ack))
        assert isinstance(ack, wire.Ack) and ack.seq == 1
        got, _ = await cb.recv_until(lambda f: isinstance(f, wire.Broadcast))
        assert isinstance(got, wire.Broadcast) and got.seq == 1
        text = secured.metrics()
        assert metric_value(text, "crdtstate_relay_rejects_total", 'reason="bad_signature"') >= 2
        assert (
            metric_value(text, "crdtstate_relay_rejects_total", 'reason="missing_signature"') >= 1
        )
    finally:
        await ca.close()
        await cb.close()


async def test_unsigned_plain_yjs_write_is_refused_where_signatures_are_required(
    secured: RelayProcess,
) -> None:
    y = await RawClient.connect(secured.url, "team-yjs", W)
    try:
        await y.send(wire.SyncStep1(b"\x00"))
        await y.send(wire.SyncStep2(wire.EMPTY_UPDATE))  # an empty step 2 is not a write
        a = DocTarget("team-yjs", "w")
        a.write("k", 1)
        await y.send(wire.SyncUpdate(a.doc.get_update()))
        code, frames = await _first_close(y)
        assert code == wire.CloseCode.FORBIDDEN
        assert any(isinstance(f, wire.AuthDenied) for f in frames)
    finally:
        await y.close()


async def test_unsigned_plain_yjs_write_is_accepted_where_policy_allows(
    secured: RelayProcess,
) -> None:
    a = DocTarget("open-yjs", "w")
    reader, _, _ = await connect_replica(secured.url, DocTarget("open-yjs", "r"), "extra-token-9")
    y = await RawClient.connect(secured.url, "open-yjs", "extra-token-9")
    try:
        await y.send(wire.SyncStep1(b"\x00"))
        a.write("k", 1)
        await y.send(wire.SyncUpdate(a.doc.get_update()))
        got, _ = await reader.recv_until(lambda f: isinstance(f, wire.Broadcast))
        assert isinstance(got, wire.Broadcast) and got.origin.startswith("yjs:")
    finally:
        await y.close()
        await reader.close()


async def test_new_connection_of_a_replica_takes_over_and_back_and_forth_alarms(
    secured: RelayProcess,
) -> None:
    target = DocTarget("team-take", "dup")
    first = await RawClient.connect(secured.url, "team-take", W)
    await first.send(
        wire.Hello(1, target.replica_id, target.public_key, wire.Seq(0), b"\x00", "", "inst-A")
    )
    await first.recv_until(lambda f: isinstance(f, wire.Welcome))
    second = await RawClient.connect(secured.url, "team-take", W)
    await second.send(
        wire.Hello(1, target.replica_id, target.public_key, wire.Seq(0), b"\x00", "", "inst-B")
    )
    await second.recv_until(lambda f: isinstance(f, wire.Welcome))
    assert await first.closed_code() == wire.CloseCode.REPLACED
    # The replaced instance comes back: that is two live processes fighting.
    third = await RawClient.connect(secured.url, "team-take", W)
    await third.send(
        wire.Hello(1, target.replica_id, target.public_key, wire.Seq(0), b"\x00", "", "inst-A")
    )
    await third.recv_until(lambda f: isinstance(f, wire.Welcome))
    assert await second.closed_code() == wire.CloseCode.REPLACED
    text = secured.metrics()
    assert metric_value(text, "crdtstate_relay_takeovers_total") >= 2
    assert metric_value(text, "crdtstate_relay_split_brain_total") >= 1
    for c in (first, second, third):
        await c.close()


async def test_unsupported_protocol_version_is_refused_with_4002(secured: RelayProcess) -> None:
    target = DocTarget("team-ver", "v")
    client = await RawClient.connect(secured.url, "team-ver", W)
    try:
        await client.send(
            wire.Hello(0, target.replica_id, target.public_key, wire.Seq(0), b"\x00", "", "i")
        )
        code, frames = await _first_close(client)
        assert code == wire.CloseCode.UNSUPPORTED_VERSION
        assert any(
            isinstance(f, wire.ErrorFrame) and f.code == wire.ErrorCode.UNSUPPORTED_VERSION
            for f in frames
        )
    finally:
        await client.close()


async def test_bad_namespace_in_url_is_closed_with_4004(secured: RelayProcess) -> None:
    client = await RawClient.connect(secured.url, "-bad", W)
    try:
        assert (await _first_close(client))[0] == wire.CloseCode.BAD_NAMESPACE
    finally:
        await client.close()


async def test_admin_snapshot_requires_the_admin_token(secured: RelayProcess) -> None:
    status, _ = secured.http("POST", "/admin/namespaces/team-a/snapshot")
    assert status == 401
