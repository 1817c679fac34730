"""JSON views of the relay: namespaces, their replicas' lag and drift, their field values.

``GET /v1/namespaces``, ``GET /v1/namespaces/<ns>/replicas`` and ``GET
/v1/namespaces/<ns>/state`` (documented in docs/protocol.md, "HTTP endpoints"). Read-only,
for the dashboard, ``crdtstate drift`` and scripts. With tokens configured a view needs a
token with read access to the namespace (``Authorization: Bearer`` or ``?token=``), or the
admin token; the namespace list shows only what the token may read. Open dev mode serves
anyone. Every error is JSON ``{"error": code, "message": text}`` with a 4xx/5xx status.

The replicas view is :class:`crdtstate.drift.ReplicasView` (what ``crdtstate drift``
parses) with the relay's assessment added to each replica (status, lag, alerts) under
default thresholds, or those given as query parameters. Gathering lives in
:mod:`relay.drift_view`, materializing in :mod:`relay.state_view`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn

from aiohttp import web

from crdtstate._ids import Namespace, validate_namespace
from crdtstate.errors import InvalidUpdate
from relay.auth import Authorizer, token_from_request
from relay.backend.base import BackendError
from relay.hub import OverloadedError
from relay.keys import AUTHORIZER, BACKEND, HUB, SETTINGS
from relay.state_view import StateCache

if TYPE_CHECKING:
    # Imported by the views that use them, not at start: the drift models and rich cost the
    # relay process memory that a relay nobody looks at never needs.
    from crdtstate.drift import DriftReport, Thresholds
    from relay.drift_view import Gathered

__all__ = ["NAMESPACES_LISTED_MAX", "STATE_CACHE", "setup_views"]

NAMESPACES_LISTED_MAX: Final = 1000
"""Most namespaces ``GET /v1/namespaces`` lists (``truncated`` says when there were more)."""

STATE_CACHE = web.AppKey("state_cache", StateCache)

_NO_STORE: Final = {"Cache-Control": "no-store"}

routes = web.RouteTableDef()


def setup_views(app: web.Application) -> None:
    """Add the ``/v1`` routes and their state cache to ``app``."""
    app[STATE_CACHE] = StateCache()
    app.router.add_routes(routes)
    # Anything else under /v1 answers JSON too, not aiohttp's text 404.
    app.router.add_route("*", "/v1/{tail:.*}", _unknown)


# -- errors and access -------------------------------------------------------------------------


def _fail(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> NoReturn:
    """Stop the request with ``status`` and a JSON error body."""
    error = web.HTTPError(
        text=json.dumps({"error": code, "message": message}),
        content_type="application/json",
        headers={**_NO_STORE, **(headers or {})},
    )
    error.set_status(status)
    raise error


def _unauthorized() -> NoReturn:
    _fail(
        401,
        "unauthorized",
        "a token with read access is required (Authorization: Bearer TOKEN, or ?token=)",
        {"WWW-Authenticate": 'Bearer realm="crdtstate-relay"'},
    )


def _json(body: Any) -> web.Response:
    return web.json_response(body, headers=_NO_STORE)


def _token(request: web.Request) -> str | None:
    return token_from_request(request.query, request.headers)


def _can_read(authorizer: Authorizer, namespace: str, token: str | None) -> bool:
    return authorizer.access_for(namespace, token) is not None or authorizer.is_admin(token)


def _namespace(request: web.Request) -> Namespace:
    """The namespace of the URL, checked for syntax and read access."""
    try:
        namespace = validate_namespace(request.match_info["namespace"])
    except ValueError as exc:
        _fail(400, "bad_namespace", str(exc))
    token = _token(request)
    if not _can_read(request.app[AUTHORIZER], namespace, token):
        if token is None:
            _unauthorized()
        _fail(403, "forbidden", f"this token gives no read access to namespace {namespace!r}")
    return namespace


def _number(query: Mapping[str, str], param: str, kind: type[float] | type[int]) -> Any:
    """Query parameter ``param`` as a finite number >= 0, or None when absent."""
    text = query.get(param)
    if text is None:
        return None
    try:
        number = kind(text)
    except ValueError:
        _fail(
            400,
            "bad_parameter",
            f"{param}={text!r} is not {'an integer' if kind is int else 'a number'}",
        )
    if not math.isfinite(number) or number < 0:
        _fail(400, "bad_parameter", f"{param} must be a finite number >= 0")
    return number


def _thresholds(query: Mapping[str, str]) -> Thresholds:
    """Alert limits from the query (the ``crdtstate drift`` options), defaults otherwise."""
    from crdtstate.drift import Thresholds

    defaults = Thresholds()
    lag = _number(query, "max_lag_seconds", float)
    recovery = _number(query, "max_recovery_seconds", float)
    return Thresholds(
        lag_s_max=defaults.lag_s_max if lag is None else lag,
        recovery_s_max=defaults.recovery_s_max if recovery is None else recovery,
        outbox_len_max=_number(query, "max_outbox", int),
        silence_s_max=_number(query, "max_silence_seconds", float),
    )


def _storage_failed(exc: BackendError) -> NoReturn:
    _fail(503, "storage_unavailable", f"the relay's storage cannot be read: {exc}")


# -- views -------------------------------------------------------------------------------------


def _replicas_body(gathered: Gathered, report: DriftReport) -> dict[str, Any]:
    from relay.drift_view import summarize

    body: dict[str, Any] = gathered.view.model_dump(mode="json")
    assessed = {r.replica_id: r for r in report.replicas}
    for entry in body["replicas"]:
        drift = assessed[entry["replica_id"]]
        entry.update(
            status=drift.status.value,
            converged=drift.converged,
            lag_seqs=drift.lag_seqs,
            lag_seconds=drift.lag_seconds,
            last_seen_age_s=drift.last_seen_age_s,
            alerts=[a.model_dump(mode="json") for a in drift.alerts],
            ignored_fields=gathered.dropped.get(entry["replica_id"], []),
        )
    body.update(
        loaded=gathered.loaded,
        connections=gathered.connections,
        thresholds=report.thresholds,
        summary=summarize(report),
    )
    return body


@routes.get("/v1/namespaces")
async def list_namespaces(request: web.Request) -> web.Response:
    """Every namespace the token may read, with replica counts by status and alerts."""
    from crdtstate.drift import assess
    from relay.drift_view import gather, summarize

    authorizer = request.app[AUTHORIZER]
    token = _token(request)
    open_mode = request.app[SETTINGS].is_open
    if token is None and not open_mode:
        _unauthorized()
    thresholds = _thresholds(request.query)
    hub, backend = request.app[HUB], request.app[BACKEND]
    now = time.time()
    try:
        stored = set(await backend.namespaces())
        known = stored | set(hub.namespaces)
        names = sorted(ns for ns in known if _can_read(authorizer, ns, token))
        if known and not names and not open_mode:
            _fail(403, "forbidden", "this token reads none of the relay's namespaces")
        listed: list[dict[str, Any]] = []
        for name in names[:NAMESPACES_LISTED_MAX]:
            gathered = await gather(hub, backend, name, now, stored=name in stored)
            if gathered is None:
                continue
            report = assess(gathered.view, now, thresholds)
            listed.append(
                {
                    "namespace": name,
                    "loaded": gathered.loaded,
                    "connections": gathered.connections,
                    "head_seq": gathered.view.head_seq,
                    "head_time": gathered.view.head_time,
                    **summarize(report),
                }
            )
    except BackendError as exc:
        _storage_failed(exc)
    return _json(
        {
            "served_at": now,
            "namespaces": listed,
            "truncated": len(names) > NAMESPACES_LISTED_MAX,
        }
    )


@routes.get("/v1/namespaces/{namespace}/replicas")
async def namespace_replicas(request: web.Request) -> web.Response:
    """Every replica of a namespace: heartbeat, connection, lag, convergence, alerts."""
    from crdtstate.drift import assess
    from relay.drift_view import gather

    namespace = _namespace(request)
    thresholds = _thresholds(request.query)
    now = time.time()
    try:
        gathered = await gather(request.app[HUB], request.app[BACKEND], namespace, now)
    except BackendError as exc:
        _storage_failed(exc)
    if gathered is None:
        _fail(404, "unknown_namespace", f"the relay has no namespace {namespace!r}")
    return _json(_replicas_body(gathered, assess(gathered.view, now, thresholds)))


@routes.get("/v1/namespaces/{namespace}/state")
async def namespace_state(request: web.Request) -> web.Response:
    """A namespace's field values, read through the schema declared in its document."""
    namespace = _namespace(request)
    hub, backend = request.app[HUB], request.app[BACKEND]
    live = hub.namespaces.get(namespace)
    acquired = False
    try:
        if live is None:
            if namespace not in await backend.namespaces():
                _fail(404, "unknown_namespace", f"the relay has no namespace {namespace!r}")
            if hub.draining:
                _fail(503, "draining", "the relay is shutting down")
            live = await hub.acquire(namespace)
            acquired = True
            live.refs += 1  # not evicted while it is read
        state = await request.app[STATE_CACHE].get(live)
    except OverloadedError as exc:
        _fail(503, "overloaded", str(exc))
    except BackendError as exc:
        _storage_failed(exc)
    except InvalidUpdate as exc:
        _fail(500, "unreadable_state", f"the relay's document cannot be read: {exc}")
    finally:
        if acquired and live is not None:
            live.refs -= 1
            hub.release(live)
    fields = [
        {
            "name": name,
            "kind": state.fields.get(name, {}).get("kind"),
            "type": state.fields.get(name, {}).get("type"),
            "descriptor": state.fields.get(name),
            "value": value,
        }
        for name, value in state.values.items()
    ]
    return _json(
        {
            "namespace": namespace,
            "head_seq": int(live.head),
            "served_at": time.time(),
            "schema": state.schema,
            "fields": fields,
            "values": state.values,
            "digest": state.digest,
            "state_vector": state.state_vector,
            "violations": state.violations,
        }
    )


async def _unknown(request: web.Request) -> web.Response:
    _fail(404, "not_found", f"no view at {request.method} {request.path}")
