"""A small blocking client of the Toxiproxy HTTP API, and the choice of which server to use.

Why not toxiproxy-python: it is a test-only dependency, it calls ``requests`` without a
timeout (a stuck server hangs the caller), and it needs a ``running()`` probe per call. The
harness and the pytest plugin only need a dozen calls, so they speak the API directly with
the standard library, with a timeout on every request.

:func:`start_proxy_server` returns the API to use: the real ``toxiproxy-server`` at
``$TOXIPROXY_URL`` when that is set, else the project's own fault proxy (in a thread of this
process, or as a child process). Every proxy the harness creates is named with a per-run
prefix, so a shared real server can host several runs at once.

Imports only the fault proxy's runners.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from chaos.faultproxy import FaultProxyProcess, FaultProxyThread

TOXIPROXY_URL_ENV = "TOXIPROXY_URL"
REQUEST_TIMEOUT_S = 10.0

ProxyMode = Literal["thread", "process", "external"]


class ProxyApiError(RuntimeError):
    """The proxy API answered with an error status (or could not be reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class ProxyInfo:
    """One proxy as the API reports it."""

    name: str
    listen: str
    upstream: str
    enabled: bool

    @property
    def port(self) -> int:
        """The bound listen port."""
        return int(self.listen.rsplit(":", 1)[1])


class ProxyApi:
    """Blocking Toxiproxy API client (one HTTP request per call, each with a timeout).

    Args:
        url: base URL of the API (``http://127.0.0.1:8474``).
    """

    def __init__(self, url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "crdtstate-chaos")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise ProxyApiError(f"{method} {path}: {exc.code} {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ProxyApiError(f"{method} {path}: proxy API unreachable: {exc}") from None
        return json.loads(raw) if raw.strip() else None

    def version(self) -> str:
        """The server's version string."""
        answer = self._call("GET", "/version")
        return str(answer.get("version", "")) if isinstance(answer, dict) else str(answer)

    def create(self, name: str, upstream: str, listen: str = "127.0.0.1:0") -> ProxyInfo:
        """Create a proxy (``listen`` port 0 = the server picks one)."""
        answer = self._call(
            "POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream}
        )
        return _info(answer)

    def get(self, name: str) -> ProxyInfo:
        """One proxy."""
        return _info(self._call("GET", f"/proxies/{name}"))

    def delete(self, name: str) -> None:
        """Delete a proxy (closing its connections); a missing proxy is not an error."""
        try:
            self._call("DELETE", f"/proxies/{name}")
        except ProxyApiError as exc:
            if exc.status != 404:
                raise

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disable (close every connection, refuse new ones) or enable a proxy."""
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    def set_upstream(self, name: str, upstream: str) -> None:
        """Point a proxy at another upstream (a relay that came back on another port)."""
        self._call("POST", f"/proxies/{name}", {"upstream": upstream})

    def add_toxic(
        self,
        proxy: str,
        toxic_type: str,
        stream: str,
        attributes: dict[str, int],
        *,
        name: str | None = None,
        toxicity: float = 1.0,
    ) -> str:
        """Add a toxic; returns its name."""
        body = {
            "name": name or f"{toxic_type}_{stream}",
            "type": toxic_type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": {k: int(v) for k, v in attributes.items()},
        }
        answer = self._call("POST", f"/proxies/{proxy}/toxics", body)
        return str(answer["name"])

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        """The toxics of a proxy."""
        answer = self._call("GET", f"/proxies/{proxy}/toxics")
        return list(answer or [])

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        """Remove a toxic; a missing one is not an error."""
        try:
            self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")
        except ProxyApiError as exc:
            if exc.status != 404:
                raise

    def clear(self, proxy: str) -> None:
        """Heal one proxy: remove its toxics and enable it."""
        for toxic in self.toxics(proxy):
            self.remove_toxic(proxy, str(toxic["name"]))
        self.set_enabled(proxy, True)

    def reset(self) -> None:
        """Heal every proxy of the server (enable all, drop all toxics)."""
        self._call("POST", "/reset")


def _info(answer: Any) -> ProxyInfo:
    return ProxyInfo(
        name=str(answer["name"]),
        listen=str(answer["listen"]),
        upstream=str(answer["upstream"]),
        enabled=bool(answer["enabled"]),
    )


class ProxyServer(Protocol):
    """What :func:`start_proxy_server` returns: an API URL and a way to stop it."""

    @property
    def url(self) -> str: ...  # pragma: no cover - protocol

    def stop(self) -> object: ...  # pragma: no cover - protocol


class ExternalProxyServer:
    """A toxiproxy-server the harness did not start (``$TOXIPROXY_URL``); never stopped."""

    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return self._url

    def stop(self) -> None:
        """Nothing to stop: the server belongs to someone else."""


def start_proxy_server(mode: ProxyMode | None = None, seed: int | None = None) -> ProxyServer:
    """Start (or find) the proxy server the harness will drive.

    Args:
        mode: ``external`` (``$TOXIPROXY_URL``), ``thread`` (the fault proxy in this
            process), ``process`` (the fault proxy as a child process). Default: external
            when ``$TOXIPROXY_URL`` is set, else thread.
        seed: seed of the fault proxy's randomness (jitter, toxicity).
    """
    env_url = os.environ.get(TOXIPROXY_URL_ENV, "").strip()
    if mode is None:
        mode = "external" if env_url else "thread"
    if mode == "external":
        if not env_url:
            raise ProxyApiError(f"proxy mode 'external' needs ${TOXIPROXY_URL_ENV}")
        return ExternalProxyServer(env_url)
    if mode == "process":
        process = FaultProxyProcess(seed=seed)
        process.start()
        return process
    thread = FaultProxyThread(seed=seed)
    thread.start()
    return thread
