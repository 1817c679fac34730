"""Relay settings: defaults, the TOML file and the environment, validated here.

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

Settings are frozen dataclasses checked by a small validator of this module (types, bounds,
unknown keys; every problem reported with its dotted key), not pydantic models: building
those cost the relay process about 8 MiB at start, for a handful of numbers and strings.

Owns settings only. Imports the standard library; nothing else of the relay.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import importlib.util
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from functools import partial
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Access",
    "BackendSettings",
    "ConfigError",
    "LimitSettings",
    "NamespacePolicy",
    "RelaySettings",
    "ResolvedPolicy",
    "SecretStr",
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


class SecretStr:
    """A secret that does not show in reprs or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The secret text."""
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# -- validation ------------------------------------------------------------------------------

_Loc = tuple[str | int, ...]


class _Invalid(ValueError):
    """Problems found while validating, each ``(location, message)``."""

    def __init__(self, problems: list[tuple[_Loc, str]]) -> None:
        super().__init__(
            "; ".join(
                f"{'.'.join(map(str, loc)) or '(top)'}: {message}" for loc, message in problems
            )
        )
        self.problems = problems


_NUMBER_TEXT = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")
_TRUE = frozenset(("true", "1", "yes", "on"))
_FALSE = frozenset(("false", "0", "no", "off"))
_HINTS: dict[type, dict[str, Any]] = {}


def _gather(steps: list[Callable[[], Any]]) -> list[Any]:
    """Run every step, gathering all problems before raising them together."""
    out: list[Any] = []
    problems: list[tuple[_Loc, str]] = []
    for step in steps:
        try:
            out.append(step())
        except _Invalid as exc:
            problems.extend(exc.problems)
    if problems:
        raise _Invalid(problems)
    return out


def _coerce(kind: Any, value: Any, loc: _Loc) -> Any:
    """``value`` as ``kind``, with the lax conversions a TOML file, the environment or the
    command line need (an int where a float is expected, "8765" for a port), or _Invalid."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _coerce(inner, value, loc)
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise _Invalid([(loc, "Input should be " + " or ".join(map(repr, choices)))])
        return value
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list | tuple):
            raise _Invalid([(loc, "Input should be a valid list")])
        return _gather([partial(_coerce, item, v, (*loc, i)) for i, v in enumerate(value)])
    if origin is dict:
        _, item = typing.get_args(kind)
        if not isinstance(value, Mapping):
            raise _Invalid([(loc, "Input should be a valid dictionary")])
        keys = [str(key) for key in value]
        values = _gather(
            [
                partial(_coerce, item, v, (*loc, k))
                for k, v in zip(keys, value.values(), strict=True)
            ]
        )
        return dict(zip(keys, values, strict=True))
    if isinstance(kind, type) and issubclass(kind, _Model):
        if isinstance(value, kind):
            return value
        if not isinstance(value, Mapping):
            raise _Invalid([(loc, "Input should be a valid dictionary")])
        return kind.from_mapping(value, loc)
    return _coerce_scalar(kind, value, loc)


def _coerce_scalar(kind: Any, value: Any, loc: _Loc) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Invalid([(loc, "Input should be a valid boolean")])
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise _Invalid([(loc, "Input should be a valid integer")])
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER_TEXT.match(value):
            return float(value)
        raise _Invalid([(loc, "Input should be a valid number")])
    if kind is str:
        if isinstance(value, str):
            return value
        raise _Invalid([(loc, "Input should be a valid string")])
    if kind is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise _Invalid([(loc, "Input should be a valid path")])
    if kind is SecretStr:
        if isinstance(value, SecretStr):
            return value
        if isinstance(value, str):
            return SecretStr(value)
        raise _Invalid([(loc, "Input should be a valid string")])
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            expected = " or ".join(repr(member.value) for member in kind)
            raise _Invalid([(loc, f"Input should be {expected}")]) from None
    raise TypeError(f"no validator for {kind!r}")  # a field type this module does not know


def _check_bounds(value: Any, bounds: Mapping[str, Any], loc: _Loc) -> None:
    if value is None:
        return
    if "gt" in bounds and not value > bounds["gt"]:
        raise _Invalid([(loc, f"Input should be greater than {bounds['gt']}")])
    if "ge" in bounds and not value >= bounds["ge"]:
        raise _Invalid([(loc, f"Input should be greater than or equal to {bounds['ge']}")])
    if "le" in bounds and not value <= bounds["le"]:
        raise _Invalid([(loc, f"Input should be less than or equal to {bounds['le']}")])
    if "min_length" in bounds and len(value) < bounds["min_length"]:
        raise _Invalid([(loc, f"List should have at least {bounds['min_length']} item")])
    if "pattern" in bounds and not re.search(bounds["pattern"], value):
        raise _Invalid([(loc, f"String should match pattern '{bounds['pattern']}'")])


@dataclasses.dataclass(frozen=True)
class _Model:
    """Frozen settings: construction checks and converts every field (keyword arguments in
    code, :meth:`from_mapping` for parsed TOML), unknown keys are refused."""

    def __post_init__(self) -> None:
        cls = type(self)
        hints = _HINTS.get(cls)
        if hints is None:
            hints = _HINTS[cls] = typing.get_type_hints(cls)
        problems: list[tuple[_Loc, str]] = []
        for f in dataclasses.fields(self):
            where: _Loc = (f.name,)
            try:
                value = _coerce(hints[f.name], getattr(self, f.name), where)
                _check_bounds(value, f.metadata, where)
            except _Invalid as exc:
                problems.extend(exc.problems)
                continue
            object.__setattr__(self, f.name, value)
        if not problems:
            try:
                self._check()
            except ValueError as exc:
                problems.append(((), f"Value error, {exc}"))
        if problems:
            raise _Invalid(problems)

    def _check(self) -> None:
        """Checks across fields (raise ValueError)."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], loc: _Loc = ()) -> Any:
        """Build from parsed data; every problem raises :class:`_Invalid` with its key."""
        names = {f.name for f in dataclasses.fields(cls)}
        problems: list[tuple[_Loc, str]] = [
            ((*loc, str(key)), "Extra inputs are not permitted") for key in data if key not in names
        ]
        try:
            built = cls(**{key: value for key, value in data.items() if key in names})
        except _Invalid as exc:
            problems.extend(((*loc, *where), message) for where, message in exc.problems)
        except TypeError as exc:  # a required field is missing
            problems.append((loc, f"Field required ({exc})"))
        if problems:
            raise _Invalid(problems)
        return built


# -- settings ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenRule(_Model):
    """One token and the namespaces it opens."""

    token: SecretStr | None = None
    token_env: str | None = None
    access: Access = Access.WRITE
    namespaces: list[str] = field(default_factory=lambda: ["*"], metadata={"min_length": 1})

    def _check(self) -> None:
        if (self.token is None) == (self.token_env is None):
            raise ValueError("give exactly one of token or token_env")

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


@dataclasses.dataclass(frozen=True)
class NamespacePolicy(_Model):
    """Per-namespace policy; unset values fall back to the global limits / mode."""

    require_signatures: bool | None = None
    doc_bytes_max: int | None = field(default=None, metadata={"gt": 0})
    updates_per_s: float | None = field(default=None, metadata={"gt": 0})


@dataclasses.dataclass(frozen=True)
class LimitSettings(_Model):
    """Guardrails. Units in the names; every one has a safe default."""

    frame_bytes_max: int = field(default=16 * 1024 * 1024, metadata={"gt": 1024})
    update_bytes_max: int = field(default=4 * 1024 * 1024, metadata={"gt": 16})
    conn_updates_per_s: float = field(default=2000.0, metadata={"gt": 0})
    conn_updates_burst: int = field(default=4000, metadata={"gt": 0})
    conn_bytes_per_s: float = field(default=16 * 1024 * 1024, metadata={"gt": 0})
    namespace_updates_per_s: float = field(default=20000.0, metadata={"gt": 0})
    namespace_updates_burst: int = field(default=40000, metadata={"gt": 0})
    namespace_doc_bytes_max: int = field(default=512 * 1024 * 1024, metadata={"gt": 0})
    namespaces_in_memory_max: int = field(default=256, metadata={"gt": 0})
    namespace_idle_s: float = field(default=120.0, metadata={"gt": 0})
    connections_max: int = field(default=10000, metadata={"gt": 0})
    queue_frames_max: int = field(default=2048, metadata={"gt": 1})
    queue_bytes_max: int = field(default=16 * 1024 * 1024, metadata={"gt": 1024})
    errors_per_connection_max: int = field(default=100, metadata={"gt": 0})
    pending_updates_max: int = field(default=8192, metadata={"gt": 0})
    commit_batch_max: int = field(default=2048, metadata={"gt": 0})
    commit_delay_s: float = field(default=0.001, metadata={"ge": 0, "le": 0.1})
    catchup_ring_entries: int = field(default=4096, metadata={"ge": 0})
    catchup_ring_bytes: int = field(default=8 * 1024 * 1024, metadata={"ge": 0})
    awareness_clients_per_connection_max: int = field(default=16, metadata={"gt": 0})
    hello_timeout_s: float = field(default=30.0, metadata={"gt": 0})
    ws_heartbeat_s: float = field(default=30.0, metadata={"gt": 0})


@dataclasses.dataclass(frozen=True)
class SnapshotSettings(_Model):
    """When the relay stores a snapshot and how long replicas count for the watermark."""

    every_updates: int = field(default=10000, metadata={"gt": 0})
    every_s: float = field(default=300.0, metadata={"gt": 0})
    replica_ttl_s: float = field(default=7 * 24 * 3600.0, metadata={"gt": 0})


@dataclasses.dataclass(frozen=True)
class BackendSettings(_Model):
    """Where namespaces are stored: the embedded SQLite file (default) or NATS JetStream,
    which lets several relay processes share one log per namespace (docs/backends.md)."""

    kind: Literal["sqlite", "nats"] = "sqlite"
    url: str = "nats://127.0.0.1:4222"
    prefix: str = field(default="crdtstate", metadata={"pattern": r"^[A-Za-z0-9-]{1,32}$"})
    replicas: int = field(default=1, metadata={"ge": 1, "le": 5})
    timeout_s: float = field(default=5.0, metadata={"gt": 0})

    def _check(self) -> None:
        if self.kind == "nats" and importlib.util.find_spec("nats") is None:
            raise ValueError("the NATS backend needs nats-py: pip install 'crdtstate[nats]'")


@dataclasses.dataclass(frozen=True)
class ResolvedPolicy(_Model):
    """The effective policy of one namespace."""

    require_signatures: bool
    doc_bytes_max: int
    updates_per_s: float
    updates_burst: int


@dataclasses.dataclass(frozen=True)
class RelaySettings(_Model):
    """Everything the relay runs with.

    Attributes:
        open: open dev mode; None = open iff no token is configured.
        data_dir: SQLite database and nothing else lives here.
        fsync: commit with ``synchronous=FULL`` (survives power loss) instead of ``NORMAL``.
        yjs_fanout: when plain Yjs clients get an update: ``accepted`` (while the namespace
            is quiet, as soon as the relay has applied it to the namespace document, before
            it is durable: what a client syncing by state vector gets anyway; under load with
            its commit batch) or ``committed`` (always after it is durable, with the
            replicas' sequenced broadcast). Replicas always get committed updates only.
        event_loop: ``auto`` runs on uvloop when it is installed (a dependency on Linux and
            macOS: the same relay costs 10 to 15% less CPU per update there), else on
            asyncio's own loop; ``asyncio`` or ``uvloop`` chooses one (``uvloop`` fails to
            start without it).
    """

    host: str = "127.0.0.1"
    port: int = field(default=8765, metadata={"ge": 0, "le": 65535})
    data_dir: Path = Path("relay-data")
    open: bool | None = None
    fsync: bool = True
    admin_token: SecretStr | None = None
    admin_token_env: str | None = None
    tokens: list[TokenRule] = field(default_factory=list)
    namespaces: dict[str, NamespacePolicy] = field(default_factory=dict)
    limits: LimitSettings = field(default_factory=LimitSettings)
    snapshot: SnapshotSettings = field(default_factory=SnapshotSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    yjs_fanout: Literal["accepted", "committed"] = "accepted"
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    log_level: str = "INFO"

    def _check(self) -> None:
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("event_loop = 'uvloop' needs uvloop: pip install uvloop")

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
        settings: RelaySettings = RelaySettings.from_mapping(raw)
    except _Invalid as exc:
        where = f"config {config_path}" if config_path else "settings"
        raise ConfigError(f"{where}: {exc}") from exc
    # Resolve every env-sourced secret now: a missing variable fails at start, not at the
    # first connection.
    for rule in settings.tokens:
        rule.secret(env)
    if settings.admin_token_env and not env.get(settings.admin_token_env):
        raise ConfigError(f"admin_token_env {settings.admin_token_env!r} is not set")
    return settings
