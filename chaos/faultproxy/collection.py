"""The set of proxies and every state change the API can ask for.

Owns the semantics of spec §4 independent of HTTP: create, update, delete, populate,
reset, and the toxic operations, with Toxiproxy's checks in Toxiproxy's order. Raises
:class:`ApiError` carrying the status and the exact error text; the HTTP layer only
serialises it. Callers serialise mutations with :attr:`ProxyCollection.lock`.

Must not import aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from chaos.faultproxy.addr import resolve_listen
from chaos.faultproxy.errors import ApiError, ListenError
from chaos.faultproxy.model import (
    Attributes,
    ProxyInput,
    ProxyUpdateInput,
    ToxicInput,
    ToxicUpdateInput,
    parse_object,
    without_nulls,
)
from chaos.faultproxy.proxy import Proxy
from chaos.faultproxy.toxics import TOXIC_TYPES, Direction, Toxic

log = logging.getLogger(__name__)

DIAL_TIMEOUT_S = 10.0
"""A client connection whose upstream does not answer within this is closed."""


def _proxy_not_found() -> ApiError:
    return ApiError(404, "proxy not found")


async def _resolved(listen: str) -> str | None:
    """Return ``listen`` as the address it would bind, or None if it cannot resolve."""
    try:
        return (await resolve_listen(listen)).display()
    except ListenError:
        return None


class ProxyCollection:
    """Every proxy of one server, by name.

    Args:
        seed: base of every random draw; each proxy derives its stream from it and its name.
        dial_timeout_s: bound on each upstream dial.
    """

    def __init__(self, seed: int, dial_timeout_s: float = DIAL_TIMEOUT_S) -> None:
        self.seed = seed
        self.lock = asyncio.Lock()
        self._dial_timeout_s = dial_timeout_s
        self._proxies: dict[str, Proxy] = {}

    # -- proxies -------------------------------------------------------------------------------

    def get(self, name: str) -> Proxy:
        """Return the proxy called ``name``.

        Raises:
            ApiError: 404 ``proxy not found``.
        """
        proxy = self._proxies.get(name)
        if proxy is None:
            raise _proxy_not_found()
        return proxy

    def proxies(self) -> list[Proxy]:
        """Return every proxy, sorted by name (the reference's map order)."""
        return [self._proxies[name] for name in sorted(self._proxies)]

    def to_wire(self) -> dict[str, Any]:
        """Return the ``GET /proxies`` object."""
        return {proxy.name: proxy.to_wire() for proxy in self.proxies()}

    def _new_proxy(self, spec: ProxyInput) -> Proxy:
        return Proxy(
            spec.name,
            spec.listen,
            spec.upstream,
            seed=f"{self.seed}:{spec.name}",
            dial_timeout_s=self._dial_timeout_s,
        )

    async def create(self, spec: ProxyInput) -> Proxy:
        """Create a proxy and bind it when enabled.

        Raises:
            ApiError: 400 missing name/upstream, 409 ``proxy already exists``, 500 with the
                bind error text (the proxy is then not created).
        """
        if not spec.name:
            raise ApiError(400, "missing required field: name")
        if not spec.upstream:
            raise ApiError(400, "missing required field: upstream")
        if spec.name in self._proxies:
            raise ApiError(409, "proxy already exists")
        proxy = self._new_proxy(spec)
        if spec.enabled:
            try:
                await proxy.start()
            except ListenError as exc:
                raise ApiError(500, str(exc)) from None
        self._proxies[spec.name] = proxy
        return proxy

    async def update(self, proxy: Proxy, spec: ProxyUpdateInput) -> Proxy:
        """Apply a proxy update (absent fields keep their values); toxics are kept.

        A changed listen or upstream restarts the proxy (its connections are dropped).

        Raises:
            ApiError: 500 when the new listen does not resolve or does not bind (then the
                proxy stays disabled with the new values stored).
        """
        listen = proxy.listen if spec.listen is None else spec.listen
        upstream = proxy.upstream if spec.upstream is None else spec.upstream
        enabled = proxy.enabled if spec.enabled is None else spec.enabled
        try:
            new_address = (await resolve_listen(listen)).display()
        except ListenError as exc:
            raise ApiError(500, str(exc)) from None
        if new_address != await _resolved(proxy.listen) or upstream != proxy.upstream:
            proxy.stop()
            proxy.listen, proxy.upstream = listen, upstream
        if not enabled:
            proxy.stop()
            return proxy
        try:
            await proxy.start()
        except ListenError as exc:
            raise ApiError(500, str(exc)) from None
        return proxy

    def delete(self, proxy: Proxy) -> None:
        """Stop ``proxy`` (listener and connections) and forget it with its toxics."""
        proxy.stop()
        self._proxies.pop(proxy.name, None)

    async def populate(self, specs: list[ProxyInput]) -> list[Proxy]:
        """Create or replace proxies in order (spec §4.4); identical ones are left alone.

        Raises:
            ApiError: the first failure's status and text, with ``proxies`` listing the
                entries already applied (they stay applied).
        """
        applied: list[Proxy] = []
        for spec in specs:
            existing = self._proxies.get(spec.name)
            try:
                if existing is not None:
                    wanted = (await resolve_listen(spec.listen)).display()
                    same_listen = wanted == await _resolved(existing.listen)
                    if same_listen and spec.upstream == existing.upstream:
                        applied.append(existing)
                        continue
                    self.delete(existing)
                applied.append(await self.create(spec))
            except ListenError as exc:
                raise self._populate_error(ApiError(500, str(exc)), applied) from None
            except ApiError as exc:
                raise self._populate_error(exc, applied) from None
        return applied

    @staticmethod
    def _populate_error(exc: ApiError, applied: list[Proxy]) -> ApiError:
        return ApiError(exc.status, exc.message, {"proxies": [p.to_wire() for p in applied]})

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic (normal removal semantics).

        Every proxy is processed even when one fails to bind.

        Raises:
            ApiError: 500 with the first bind error, after all proxies were processed.
        """
        first_error: ListenError | None = None
        for proxy in self.proxies():
            try:
                await proxy.start()
            except ListenError as exc:
                first_error = first_error or exc
            proxy.remove_all_toxics()
        if first_error is not None:
            raise ApiError(500, str(first_error))

    def close(self) -> list[asyncio.Task[None]]:
        """Stop every proxy (listeners and connections); the collection stays usable.

        Returns:
            The tasks of the dropped connections, for a caller that awaits their end.
        """
        return [task for proxy in self._proxies.values() for task in proxy.stop()]

    # -- toxics --------------------------------------------------------------------------------

    def add_toxic(self, proxy: Proxy, spec: ToxicInput) -> Toxic:
        """Create a toxic on ``proxy`` and attach it to its live connections.

        Raises:
            ApiError: 400 bad stream / ``invalid toxic type`` / bad attributes,
                409 ``toxic already exists``.
        """
        direction = Direction.parse(spec.stream)
        if direction is None:
            raise ApiError(400, "stream was invalid, can be either upstream or downstream")
        name = spec.name or f"{spec.type}_{spec.stream}"
        kind = TOXIC_TYPES.get(spec.type)
        if kind is None:
            raise ApiError(400, "invalid toxic type")
        if proxy.find_toxic(name) is not None:
            raise ApiError(409, "toxic already exists")
        attributes = parse_object(
            {} if spec.attributes is None else spec.attributes, kind.attributes, "attributes"
        )
        toxic = Toxic(name, spec.type, spec.stream, direction, spec.toxicity, attributes)
        proxy.add_toxic(toxic)
        return toxic

    @staticmethod
    def get_toxic(proxy: Proxy, name: str) -> Toxic:
        """Return the toxic called ``name`` on ``proxy``.

        Raises:
            ApiError: 404 ``toxic not found``.
        """
        toxic = proxy.find_toxic(name)
        if toxic is None:
            raise ApiError(404, "toxic not found")
        return toxic

    def update_toxic(self, proxy: Proxy, toxic: Toxic, spec: ToxicUpdateInput) -> Toxic:
        """Merge new attributes key by key and replace toxicity when given.

        Raises:
            ApiError: 400 for attributes of the wrong type (the toxic is left unchanged).
        """
        attributes: Attributes | None = None
        if spec.attributes is not None:
            if not isinstance(spec.attributes, dict):
                # parse_object words the error; any non-object fails there
                parse_object(spec.attributes, type(toxic.attributes), "attributes")
            merged = {**toxic.attributes.model_dump(), **without_nulls(spec.attributes)}
            attributes = parse_object(merged, type(toxic.attributes), "attributes")
        proxy.update_toxic(toxic, toxicity=spec.toxicity, attributes=attributes)
        return toxic

    @staticmethod
    def remove_toxic(proxy: Proxy, toxic: Toxic) -> None:
        """Remove ``toxic`` from ``proxy`` with its per-type removal semantics."""
        proxy.remove_toxic(toxic)
