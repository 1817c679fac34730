"""A replica's identity: its stable replica id and its ed25519 key pair.

Kept in the replica's data directory::

    identity.key   the private key (PKCS#8 PEM), created with mode 0600, never widened
    identity.json  {"format": 1, "replica_id": ..., "public_key": <hex>}

``identity.json`` is written last: an identity exists once it exists, so a crash during
creation leaves either nothing usable (the next call creates afresh) or a whole identity.
Both files are written atomically (temp file, fsync, rename, fsync of the directory) while
holding ``.identity.lock`` so two processes starting at once agree on one identity.

Imports only ids and errors (and ``cryptography``); must not import the store, pycrdt or
anything above.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from crdtstate._ids import ReplicaId, validate_replica_id
from crdtstate.errors import CorruptStoreError, StoreError

__all__ = ["Identity", "load_or_create_identity", "verify_signature"]

KEY_FILE: Final = "identity.key"
INFO_FILE: Final = "identity.json"
_LOCK_FILE: Final = ".identity.lock"
_FORMAT: Final = 1
_PUBLIC_KEY_BYTES: Final = 32
_SIGNATURE_BYTES: Final = 64
_KEY_FILE_BYTES_MAX: Final = 4096


@dataclass(frozen=True)
class Identity:
    """A replica id and its ed25519 key pair; the private half never leaves this object.

    Attributes:
        replica_id: the stable id of the replica (one data directory).
        public_key: raw 32-byte ed25519 public key.
    """

    replica_id: ReplicaId
    public_key: bytes
    _private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte ed25519 signature of ``data``.

        Raises:
            TypeError: ``data`` is not bytes.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data to sign must be bytes, not {type(data).__name__}")
        return self._private_key.sign(bytes(data))


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Return True when ``signature`` is ``public_key``'s ed25519 signature of ``data``.

    Returns False on any malformed input (wrong types or lengths, not a curve point);
    never raises.
    """
    if not all(
        isinstance(v, bytes | bytearray | memoryview) for v in (public_key, data, signature)
    ):
        return False
    if len(public_key) != _PUBLIC_KEY_BYTES or len(signature) != _SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(data))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def load_or_create_identity(data_dir: Path, replica_id: str | None = None) -> Identity:
    """Load the identity kept in ``data_dir``, creating it (and the directory) if absent.

    Args:
        data_dir: the replica's data directory.
        replica_id: the id to create the identity with (random when None); a later call
            may pass it again but not a different one.

    Returns:
        The identity.

    Raises:
        ValueError: ``replica_id`` is not a valid replica id.
        StoreError: the stored id differs from ``replica_id``; the key file is readable by
            group or others; the directory cannot be created or written.
        CorruptStoreError: the identity files cannot be read or do not match.
    """
    if not isinstance(data_dir, Path):
        raise TypeError(f"data_dir must be a pathlib.Path, not {type(data_dir).__name__}")
    wanted = None if replica_id is None else validate_replica_id(replica_id)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create data directory {data_dir}: {exc}") from exc
    with _creation_lock(data_dir):
        if (data_dir / INFO_FILE).exists():
            identity = _load(data_dir)
        else:
            identity = _create(data_dir, wanted or ReplicaId(secrets.token_hex(8)))
    if wanted is not None and identity.replica_id != wanted:
        raise StoreError(
            f"data directory {data_dir} belongs to replica {identity.replica_id!r}, not "
            f"{wanted!r}: a data directory keeps one replica id for life (use another "
            "directory for another replica)"
        )
    return identity


@contextlib.contextmanager
def _creation_lock(data_dir: Path) -> Iterator[None]:
    path = data_dir / _LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for milliseconds, only while loading/creating
        yield
    finally:
        os.close(fd)


def _create(data_dir: Path, replica_id: ReplicaId) -> Identity:
    for leftover in data_dir.glob(".identity.*.tmp"):  # from a crash mid-creation
        leftover.unlink(missing_ok=True)
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_key = private_key.public_key().public_bytes_raw()
    info = {"format": _FORMAT, "replica_id": replica_id, "public_key": public_key.hex()}
    try:
        _write_atomic(data_dir, KEY_FILE, pem, 0o600)
        _write_atomic(data_dir, INFO_FILE, json.dumps(info, indent=2).encode() + b"\n", 0o644)
    except OSError as exc:
        raise StoreError(f"cannot create the identity in {data_dir}: {exc}") from exc
    return Identity(replica_id, public_key, private_key)


def _write_atomic(data_dir: Path, name: str, content: bytes, mode: int) -> None:
    tmp = data_dir / f".identity.{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # The mode is set at creation: a private key must never exist with wider permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, data_dir / name)
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _load(data_dir: Path) -> Identity:
    info_path = data_dir / INFO_FILE
    key_path = data_dir / KEY_FILE
    info = _read_info(info_path)
    try:
        replica_id = validate_replica_id(info["replica_id"])
        public_key = bytes.fromhex(info["public_key"])
        if len(public_key) != _PUBLIC_KEY_BYTES or info.get("format") != _FORMAT:
            raise ValueError("wrong public key length or unknown format")
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptStoreError(f"identity file {info_path} is malformed: {exc}") from exc
    private_key = _read_private_key(key_path)
    if private_key.public_key().public_bytes_raw() != public_key:
        raise CorruptStoreError(
            f"identity key {key_path} does not match the public key in {info_path}"
        )
    return Identity(replica_id, public_key, private_key)


def _read_info(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            raw = file.read(_KEY_FILE_BYTES_MAX + 1)
        info = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptStoreError(f"identity file {path} cannot be read: {exc}") from exc
    if not isinstance(info, dict):
        raise CorruptStoreError(f"identity file {path} is not a JSON object")
    return info


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise CorruptStoreError(f"identity key {path} is missing") from exc
    except OSError as exc:
        raise CorruptStoreError(f"identity key {path} cannot be opened: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CorruptStoreError(f"identity key {path} is not a regular file")
        if info.st_mode & 0o077:
            raise StoreError(
                f"identity key {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or "
                f"others may read it; refusing to use it (fix with: chmod 600 {path})"
            )
        pem = os.read(fd, _KEY_FILE_BYTES_MAX)
    except OSError as exc:
        raise CorruptStoreError(f"identity key {path} cannot be read: {exc}") from exc
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CorruptStoreError(f"identity key {path} is not a readable key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CorruptStoreError(f"identity key {path} is not an ed25519 key")
    return key
