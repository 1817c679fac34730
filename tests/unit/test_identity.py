"""Replica identity: creation, reload, permissions, corruption, signatures."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstate.errors import CorruptStoreError, StoreError
from crdtstate.identity import (
    INFO_FILE,
    KEY_FILE,
    Identity,
    load_or_create_identity,
    verify_signature,
)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_first_call_creates_directory_key_and_info(tmp_path: Path) -> None:
    data = tmp_path / "a" / "data"
    identity = load_or_create_identity(data)
    assert len(identity.public_key) == 32
    info = json.loads((data / INFO_FILE).read_text())
    assert info["replica_id"] == identity.replica_id
    assert bytes.fromhex(info["public_key"]) == identity.public_key
    assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600
    assert not list(data.glob("*.tmp"))


def test_key_file_is_created_0600_even_with_an_open_umask(
    tmp_path: Path, umask_zero: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[tuple[str, int]] = []
    real_open = os.open

    def recording_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if flags & os.O_CREAT:
            created.append((os.fspath(path), mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", recording_open)
    load_or_create_identity(tmp_path)
    monkeypatch.undo()
    key_creations = [mode for path, mode in created if KEY_FILE in Path(path).name]
    assert key_creations == [0o600]  # the temp file of the key is born private
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


def test_later_calls_load_the_same_identity(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    second = load_or_create_identity(tmp_path)
    assert first == second
    signature = second.sign(b"hello")
    assert verify_signature(first.public_key, b"hello", signature)


def test_explicit_replica_id_is_used_and_may_be_repeated(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path, "agent-42.a")
    assert identity.replica_id == "agent-42.a"
    assert load_or_create_identity(tmp_path, "agent-42.a") == identity
    assert load_or_create_identity(tmp_path) == identity


def test_a_different_explicit_replica_id_is_refused_naming_the_stored_one(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path, "alpha")
    with pytest.raises(StoreError, match="'alpha'") as info:
        load_or_create_identity(tmp_path, "beta")
    assert "beta" in str(info.value)
    assert not isinstance(info.value, CorruptStoreError)


@pytest.mark.parametrize("bad", ["", "-leading-dash", "has space", "x" * 65, "é"])
def test_invalid_replica_id_is_refused_before_anything_is_created(tmp_path: Path, bad: str) -> None:
    data = tmp_path / "data"
    with pytest.raises(ValueError, match="replica id"):
        load_or_create_identity(data, bad)
    assert not data.exists()


def test_random_replica_ids_differ(tmp_path: Path) -> None:
    a = load_or_create_identity(tmp_path / "a")
    b = load_or_create_identity(tmp_path / "b")
    assert a.replica_id != b.replica_id
    assert a.public_key != b.public_key


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    key = tmp_path / KEY_FILE
    key.chmod(0o644)
    with pytest.raises(StoreError, match="chmod 600") as info:
        load_or_create_identity(tmp_path)
    assert "0644" in str(info.value)
    assert stat.S_IMODE(key.stat().st_mode) == 0o644  # not silently "fixed"


def test_key_readable_by_group_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o640)
    with pytest.raises(StoreError, match="group or others"):
        load_or_create_identity(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / INFO_FILE).write_text("{not json"), "cannot be read"),
        (lambda d: (d / INFO_FILE).write_text("[1, 2]"), "not a JSON object"),
        (lambda d: (d / INFO_FILE).write_text('{"format": 1}'), "malformed"),
        (lambda d: _edit_info(d, public_key="zz"), "malformed"),
        (lambda d: _edit_info(d, public_key="00" * 32), "does not match"),
        (lambda d: _edit_info(d, replica_id="bad id"), "malformed"),
        (lambda d: _edit_info(d, format=2), "malformed"),
        (lambda d: (d / KEY_FILE).unlink(), "missing"),
        (lambda d: (d / KEY_FILE).write_bytes(b"garbage"), "not a readable key"),
        (lambda d: (d / INFO_FILE).write_bytes(b"\xff\xfe"), "cannot be read"),
    ],
)
def test_corrupt_identity_gives_corrupt_store_error_naming_the_file(
    tmp_path: Path, damage: Any, message: str
) -> None:
    load_or_create_identity(tmp_path)
    damage(tmp_path)
    with pytest.raises(CorruptStoreError, match=message) as info:
        load_or_create_identity(tmp_path)
    assert str(tmp_path) in str(info.value)


def _edit_info(data_dir: Path, **changes: Any) -> None:
    info = json.loads((data_dir / INFO_FILE).read_text())
    info.update(changes)
    (data_dir / INFO_FILE).write_text(json.dumps(info))


def test_key_of_another_algorithm_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    load_or_create_identity(tmp_path)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / KEY_FILE).write_bytes(pem)
    with pytest.raises(CorruptStoreError, match="not an ed25519 key"):
        load_or_create_identity(tmp_path)


def test_crash_before_the_info_file_leaves_no_half_identity(tmp_path: Path) -> None:
    # What a crash between the two renames leaves: a key, no info file, a stray temp file.
    load_or_create_identity(tmp_path)
    (tmp_path / INFO_FILE).unlink()
    (tmp_path / ".identity.identity.json.123.abcd.tmp").write_text("{")
    identity = load_or_create_identity(tmp_path, "fresh")
    assert identity.replica_id == "fresh"
    assert load_or_create_identity(tmp_path) == identity
    assert not list(tmp_path.glob("*.tmp"))


def test_concurrent_first_calls_agree_on_one_identity(tmp_path: Path) -> None:
    results: list[Identity] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            results.append(load_or_create_identity(tmp_path / "data"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(results) == 4
    assert all(r == results[0] for r in results)


def test_repr_does_not_show_the_private_key(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path)
    assert "private" not in repr(identity).lower()


def test_sign_gives_64_bytes_and_refuses_text(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path)
    assert len(identity.sign(b"")) == 64
    with pytest.raises(TypeError, match="bytes"):
        identity.sign("text")  # type: ignore[arg-type]


def test_verify_rejects_wrong_data_key_and_signature(tmp_path: Path) -> None:
    a = load_or_create_identity(tmp_path / "a")
    b = load_or_create_identity(tmp_path / "b")
    sig = a.sign(b"data")
    assert verify_signature(a.public_key, b"data", sig)
    assert verify_signature(a.public_key, bytearray(b"data"), memoryview(sig))  # type: ignore[arg-type]
    assert not verify_signature(a.public_key, b"data!", sig)
    assert not verify_signature(b.public_key, b"data", sig)
    assert not verify_signature(a.public_key, b"data", sig[:-1] + bytes([sig[-1] ^ 1]))


_junk = st.none() | st.text(max_size=70) | st.binary(max_size=70) | st.integers()


@settings(max_examples=200, deadline=None)
@given(public_key=_junk, data=_junk, signature=_junk)
def test_verify_never_raises_on_malformed_input(public_key: Any, data: Any, signature: Any) -> None:
    assert verify_signature(public_key, data, signature) in (True, False)


@settings(max_examples=100, deadline=None)
@given(
    public_key=st.binary(min_size=32, max_size=32), signature=st.binary(min_size=64, max_size=64)
)
def test_verify_of_random_key_and_signature_is_false(public_key: bytes, signature: bytes) -> None:
    assert verify_signature(public_key, b"data", signature) is False
