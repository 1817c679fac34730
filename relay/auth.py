"""Who may do what: tokens, update signatures, size and rate limits.

Tokens are compared with ``hmac.compare_digest`` against every configured rule (no early
exit on the first match, so timing does not reveal which rule matched). Signatures are
ed25519 over :func:`crdtstate.sync.wire.signing_payload`; parsed public keys are cached
because parsing costs as much as verifying.

Owns access decisions and token buckets. Imports settings, ``crdtstate.sync.wire`` and
``cryptography`` (on the first signature, not at import: it costs the relay process about
7 MiB that a relay serving only unsigned updates never needs); must not import the hub, the
websocket layer or the sync client.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from crdtstate.sync.wire import signing_payload
from relay.config import Access, RelaySettings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["Authorizer", "SignatureVerifier", "TokenBucket", "token_from_request"]

_KEY_CACHE_MAX: Final = 4096


class Authorizer:
    """Maps (namespace, token) to an :class:`Access`, or None for no access.

    Args:
        settings: the relay settings (tokens resolved from ``environ``).
        environ: environment holding ``token_env`` secrets.
    """

    def __init__(self, settings: RelaySettings, environ: Mapping[str, str]) -> None:
        self._open = settings.is_open
        self._rules = [
            (rule, rule.secret(environ).encode("utf-8"), rule.access) for rule in settings.tokens
        ]
        admin: str | None = None
        if settings.admin_token is not None:
            admin = settings.admin_token.get_secret_value()
        elif settings.admin_token_env:
            admin = environ.get(settings.admin_token_env) or None
        self._admin = admin.encode("utf-8") if admin else None

    def access_for(self, namespace: str, token: str | None) -> Access | None:
        """The best access ``token`` gives on ``namespace`` (open mode: always write)."""
        if self._open:
            return Access.WRITE
        if not token:
            return None
        offered = token.encode("utf-8")
        best: Access | None = None
        for rule, secret, access in self._rules:
            # Compare first, then check the pattern: every rule costs one comparison.
            if hmac.compare_digest(offered, secret) and rule.covers(namespace):
                if access is Access.WRITE:
                    best = Access.WRITE
                elif best is None:
                    best = Access.READ
        return best

    def is_admin(self, token: str | None) -> bool:
        """True when ``token`` is the admin token (open mode without one: anyone)."""
        if self._admin is None:
            return self._open
        return token is not None and hmac.compare_digest(token.encode("utf-8"), self._admin)


def token_from_request(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """The token of a request: ``Authorization: Bearer`` header, else ``?token=``."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return query.get("token") or None


class SignatureVerifier:
    """Verifies update signatures; keeps a bounded cache of parsed public keys."""

    def __init__(self) -> None:
        self._keys: OrderedDict[bytes, Ed25519PublicKey | None] = OrderedDict()

    def _key(self, public_key: bytes) -> Ed25519PublicKey | None:
        key = self._keys.get(public_key, False)
        if key is not False:
            self._keys.move_to_end(public_key)
            return key  # type: ignore[return-value]
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        parsed: Ed25519PublicKey | None
        try:
            parsed = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            parsed = None
        self._keys[public_key] = parsed
        if len(self._keys) > _KEY_CACHE_MAX:
            self._keys.popitem(last=False)
        return parsed

    def verify(
        self,
        public_key: bytes,
        namespace: str,
        replica_id: str,
        op_id: int,
        update: bytes,
        signature: bytes,
    ) -> bool:
        """True when ``signature`` signs this update for this namespace and replica."""
        if len(signature) != 64:
            return False
        key = self._key(public_key)
        if key is None:
            return False
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(signature, signing_payload(namespace, replica_id, op_id, update))
        except InvalidSignature:
            return False
        return True


class TokenBucket:
    """Classic token bucket; time is passed in so tests and the hub share one clock."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._tokens = burst
        self._last = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if available; False (nothing taken) otherwise."""
        # Every accepted update takes from three buckets: no builtin calls here.
        tokens = self._tokens
        elapsed = now - self._last
        if elapsed > 0:
            tokens += elapsed * self._rate
            if tokens > self._burst:
                tokens = self._burst
            self._last = now
        if tokens >= amount:
            self._tokens = tokens - amount
            return True
        self._tokens = tokens
        return False
