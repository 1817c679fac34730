"""Relay settings: defaults, the TOML file and the environment, validated by pydantic.

With no file and no token anywhere the relay runs in **open dev mode**: every client may read
and write every namespace and unsigned updates are accepted (the relay says so loudly on
start). Any configured token turns open mode off unless ``open = true`` is set explicitly.

Example ``relay.toml``::

    admin_token_env = "RELAY_ADMIN_TOKEN"

    [limits]
    update_bytes_max = 1048576
    conn_updates_per_s = 500

    [snapshot]
    every_updates = 10000
    every_s = 300

    [backend]                            # default: kind = "sqlite" under --data
    kind = "nats"
    url = "nats://127.0.0.1:4222"

    [[tokens]]
    token_env = "AGENT_WRITE_TOKEN"      # or token = "literal"
    access = "write"
    namespaces = ["agent-*"]             # fnmatch patterns, default ["*"]

    [namespaces."agent-*"]
    require_signatures = true

Tokens also come from ``CRDTSTATE_RELAY_TOKENS``: whitespace-separated
``ACCESS:PATTERN:TOKEN`` items (``write:agent-*:s3cret read:*:viewer``).

Owns settings only. Imports pydantic and the standard library; nothing else of the relay.
"""

from __future__ import annotations

import enum
import fnmatch
import importlib.util
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

__all__ = [
    "Access",
    "BackendSettings",
    "ConfigError",
    "LimitSettings",
    "NamespacePolicy",
    "RelaySettings",
    "ResolvedPolicy",
    "SnapshotSettings",
    "TokenRule",
    "load_settings",
]

TOKENS_ENV = "CRDTSTATE_RELAY_TOKENS"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file, key and reason."""


class Access(enum.StrEnum):
    """What a token allows on a namespace."""

    READ = "read"
    WRITE = "write"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenRule(_Model):
    """One token and the namespaces it opens."""

    token: SecretStr | None = None
    token_env: str | None = None
    access: Access = Access.WRITE
    namespaces: list[str] = Field(default_factory=lambda: ["*"], min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> TokenRule:
        if (self.token is None) == (self.token_env is None):
            raise ValueError("give exactly one of token or token_env")
        return self

    def secret(self, environ: Mapping[str, str]) -> str:
        """The token text (read from the environment for ``token_env``).

        Raises:
            ConfigError: the environment variable is unset or empty.
        """
        if self.token is not None:
            value = self.token.get_secret_value()
        else:
            assert self.token_env is not None
            value = environ.get(self.token_env, "")
            if not value:
                raise ConfigError(f"token_env {self.token_env!r} is not set in the environment")
        if len(value) < 8:
            raise ConfigError("tokens must be at least 8 characters")
        return value

    def covers(self, namespace: str) -> bool:
        """True when one of the rule's patterns matches ``namespace``."""
        return any(fnmatch.fnmatchcase(namespace, p) for p in self.namespaces)


class NamespacePolicy(_Model):
    """Per-namespace policy; unset values fall back to the global limits / mode."""

    require_signatures: bool | None = None
    doc_bytes_max: int | None = Field(default=None, gt=0)
    updates_per_s: float | None = Field(default=None, gt=0)


class LimitSettings(_Model):
    """Guardrails. Units in the names; every one has a safe default."""

    frame_bytes_max: int = Field(default=16 * 1024 * 1024, gt=1024)
    update_bytes_max: int = Field(default=4 * 1024 * 1024, gt=16)
    conn_updates_per_s: float = Field(default=2000.0, gt=0)
    conn_updates_burst: int = Field(default=4000, gt=0)
    conn_bytes_per_s: float = Field(default=16 * 1024 * 1024, gt=0)
    namespace_updates_per_s: float = Field(default=20000.0, gt=0)
    namespace_updates_burst: int = Field(default=40000, gt=0)
    namespace_doc_bytes_max: int = Field(default=512 * 1024 * 1024, gt=0)
    namespaces_in_memory_max: int = Field(default=256, gt=0)
    namespace_idle_s: float = Field(default=120.0, gt=0)
    connections_max: int = Field(default=10000, gt=0)
    queue_frames_max: int = Field(default=2048, gt=1)
    queue_bytes_max: int = Field(default=16 * 1024 * 1024, gt=1024)
    errors_per_connection_max: int = Field(default=100, gt=0)
    pending_updates_max: int = Field(default=8192, gt=0)
    commit_batch_max: int = Field(default=2048, gt=0)
    commit_delay_s: float = Field(default=0.001, ge=0, le=0.1)
    catchup_ring_entries: int = Field(default=4096, ge=0)
    catchup_ring_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    awareness_clients_per_connection_max: int = Field(default=16, gt=0)
    hello_timeout_s: float = Field(default=30.0, gt=0)
    ws_heartbeat_s: float = Field(default=30.0, gt=0)


class SnapshotSettings(_Model):
    """When the relay stores a snapshot and how long replicas count for the watermark."""

    every_updates: int = Field(default=10000, gt=0)
    every_s: float = Field(default=300.0, gt=0)
    replica_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)


class BackendSettings(_Model):
    """Where namespaces are stored: the embedded SQLite file (default) or NATS JetStream,
    which lets several relay processes share one log per namespace (docs/backends.md)."""

    kind: Literal["sqlite", "nats"] = "sqlite"
    url: str = "nats://127.0.0.1:4222"
    prefix: str = Field(default="crdtstate", pattern=r"^[A-Za-z0-9-]{1,32}$")
    replicas: int = Field(default=1, ge=1, le=5)
    timeout_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _client_installed(self) -> BackendSettings:
        if self.kind == "nats" and importlib.util.find_spec("nats") is None:
            raise ValueError("the NATS backend needs nats-py: pip install 'crdtstate[nats]'")
        return self


class ResolvedPolicy(_Model):
    """The effective policy of one namespace."""

    require_signatures: bool
    doc_bytes_max: int
    updates_per_s: float
    updates_burst: int


class RelaySettings(_Model):
    """Everything the relay runs with.

    Attributes:
        open: open dev mode; None = open iff no token is configured.
        data_dir: SQLite database and nothing else lives here.
        fsync: commit with ``synchronous=FULL`` (survives power loss) instead of ``NORMAL``.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    data_dir: Path = Path("relay-data")
    open: bool | None = None
    fsync: bool = True
    admin_token: SecretStr | None = None
    admin_token_env: str | None = None
    tokens: list[TokenRule] = Field(default_factory=list)
    namespaces: dict[str, NamespacePolicy] = Field(default_factory=dict)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    snapshot: SnapshotSettings = Field(default_factory=SnapshotSettings)
    backend: BackendSettings = Field(default_factory=BackendSettings)
    log_level: str = "INFO"

    @property
    def is_open(self) -> bool:
        """True in open dev mode."""
        return self.open if self.open is not None else not self.tokens

    def policy_for(self, namespace: str) -> ResolvedPolicy:
        """The namespace's effective policy: the most specific matching pattern wins
        (exact name, then the longest pattern)."""
        policy = NamespacePolicy()
        matches = [p for p in self.namespaces if fnmatch.fnmatchcase(namespace, p)]
        if matches:
            best = max(matches, key=lambda p: (p == namespace, len(p)))
            policy = self.namespaces[best]
        limits = self.limits
        rate = policy.updates_per_s or limits.namespace_updates_per_s
        return ResolvedPolicy(
            require_signatures=(
                policy.require_signatures
                if policy.require_signatures is not None
                else not self.is_open
            ),
            doc_bytes_max=policy.doc_bytes_max or limits.namespace_doc_bytes_max,
            updates_per_s=rate,
            updates_burst=max(limits.namespace_updates_burst, int(rate)),
        )


def _env_tokens(environ: Mapping[str, str]) -> list[dict[str, Any]]:
    text = environ.get(TOKENS_ENV, "").strip()
    rules = []
    for item in text.split():
        parts = item.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigError(
                f"{TOKENS_ENV}: item {item.split(':', 1)[0]!r}... is not ACCESS:PATTERN:TOKEN"
            )
        access, pattern, token = parts
        rules.append({"access": access, "namespaces": [pattern], "token": token})
    return rules


def load_settings(
    config_path: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RelaySettings:
    """Build settings from defaults, a TOML file, the environment and CLI overrides.

    Args:
        config_path: a ``relay.toml``, or None.
        overrides: values from the command line (host, port, data_dir), applied last.
        environ: the environment (default ``os.environ``).

    Raises:
        ConfigError: unreadable file, bad TOML, unknown key, bad value or missing token env;
            the message says which.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if config_path is not None:
        try:
            raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {config_path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {config_path} is not valid TOML: {exc}") from exc
    raw.setdefault("tokens", [])
    raw["tokens"] = [*raw["tokens"], *_env_tokens(env)]
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        settings = RelaySettings.model_validate(raw)
    except ValidationError as exc:
        where = f"config {config_path}" if config_path else "settings"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from exc
    # Resolve every env-sourced secret now: a missing variable fails at start, not at the
    # first connection.
    for rule in settings.tokens:
        rule.secret(env)
    if settings.admin_token_env and not env.get(settings.admin_token_env):
        raise ConfigError(f"admin_token_env {settings.admin_token_env!r} is not set")
    return settings
