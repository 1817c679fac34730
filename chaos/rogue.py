"""A rogue client: hostile input for the relay during faults (F22, check C13).

Why raw sockets: a well-behaved client library cannot send a malformed handshake, a frame
whose header lies about its length, or a valid websocket frame full of garbage. The relay
must refuse each of them without sequencing anything, and keep serving everyone else; the
run's checkers (no phantom values, convergence, hygiene) then prove nothing leaked in.

Standard library only; every socket operation has a timeout.
"""

from __future__ import annotations

import base64
import random
import socket
import struct

KINDS = ("garbage-frame", "lying-length", "garbage-bytes", "no-handshake")
TIMEOUT_S = 2.0


def _handshake(namespace: str, port: int, rng: random.Random) -> bytes:
    key = base64.b64encode(rng.randbytes(16)).decode()
    return (
        f"GET /yjs/{namespace} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _frame(payload: bytes, rng: random.Random, claimed: int | None = None) -> bytes:
    """A masked binary frame (clients must mask); ``claimed`` overrides the length field."""
    length = len(payload) if claimed is None else claimed
    head = bytes([0x82])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = rng.randbytes(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _read_until_closed(sock: socket.socket, limit: int = 1 << 16) -> bool:
    """Read until the relay closes (True) or the timeout passes (False)."""
    received = 0
    try:
        while received < limit:
            chunk = sock.recv(4096)
            if not chunk:
                return True
            received += len(chunk)
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


def send_hostile(port: int, namespace: str, kind: str, rng: random.Random) -> dict[str, object]:
    """Connect to the relay and send one kind of hostile input; reports what happened.

    Returns:
        ``{"kind", "upgraded", "closed_by_relay"}`` (``upgraded`` false when refused).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.settimeout(TIMEOUT_S)
        if kind == "no-handshake":
            sock.sendall(rng.randbytes(rng.randint(1, 512)))
            return {"kind": kind, "upgraded": False, "closed_by_relay": _read_until_closed(sock)}
        sock.sendall(_handshake(namespace, port, rng))
        response = b""
        try:
            while b"\r\n\r\n" not in response and len(response) < 8192:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                response += chunk
        except TimeoutError:
            pass
        upgraded = response.startswith(b"HTTP/1.1 101")
        if upgraded:
            if kind == "garbage-frame":
                sock.sendall(_frame(rng.randbytes(rng.randint(1, 2048)), rng))
            elif kind == "lying-length":
                sock.sendall(_frame(rng.randbytes(64), rng, claimed=1 << 40)[:80])
            else:
                sock.sendall(rng.randbytes(rng.randint(1, 1024)))
        return {"kind": kind, "upgraded": upgraded, "closed_by_relay": _read_until_closed(sock)}
