"""Listen addresses: parse ``host:port``, resolve to one address, bind one socket.

Owns the rules of spec §3.1 and §7.1: a hostname resolves to exactly one address (IPv4
preferred), an empty host means every interface (dual-stack when the host supports it),
the bound address is reported as ``a.b.c.d:port`` or ``[v6]:port``, and failures carry
the text Toxiproxy's Go server would give (``listen tcp 127.0.0.1:3310: bind: address
already in use``).

Imports only the standard library and :mod:`chaos.faultproxy.errors`; knows nothing of
proxies, toxics or HTTP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass

from chaos.faultproxy.errors import ListenError

RESOLVE_TIMEOUT_S = 5.0
"""Upper bound on a hostname lookup, so an API call never hangs on DNS."""

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$"
)
_WILDCARD_HOSTS = ("", "::")


@dataclass(frozen=True, slots=True)
class ListenTarget:
    """A resolved listen address, ready to bind.

    Attributes:
        host: an IP literal, or ``""`` for every interface.
        port: the port; 0 asks the OS for a free one.
        family: ``AF_INET`` or ``AF_INET6`` (the wildcard uses ``AF_INET6`` when dual-stack).
    """

    host: str
    port: int
    family: socket.AddressFamily

    def display(self) -> str:
        """Return the address as Toxiproxy reports it (``1.2.3.4:80``, ``[::1]:80``)."""
        return format_hostport(self.host or _wildcard_host(), self.port)


def format_hostport(host: str, port: int) -> str:
    """Join a host and a port the way Go's ``net.JoinHostPort`` does."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _wildcard_host() -> str:
    return "::" if socket.has_dualstack_ipv6() else "0.0.0.0"


def split_host_port(address: str) -> tuple[str, str]:
    """Split ``host:port`` like Go's ``net.SplitHostPort``.

    Args:
        address: ``host:port``, ``[v6]:port`` or ``:port``.

    Returns:
        ``(host, port)`` as strings, brackets removed.

    Raises:
        ListenError: missing port, too many colons or unbalanced brackets.
    """
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ListenError(f"address {address}: missing ']' in address")
        host, rest = address[1:end], address[end + 1 :]
        if not rest.startswith(":"):
            raise ListenError(f"address {address}: missing port in address")
        return host, rest[1:]
    if ":" not in address:
        raise ListenError(f"address {address}: missing port in address")
    host, _, port = address.rpartition(":")
    if ":" in host:
        raise ListenError(f"address {address}: too many colons in address")
    return host, port


def _parse_port(address: str, port: str) -> int:
    if port.isascii() and port.isdigit():
        value = int(port)
        if value <= 65535:
            return value
        raise ListenError(f"address {address}: invalid port")
    if port == "":
        return 0
    try:
        return socket.getservbyname(port, "tcp")
    except (OSError, UnicodeError, ValueError):
        raise ListenError(f"lookup tcp/{port}: unknown port") from None


async def resolve_listen(address: str, timeout_s: float = RESOLVE_TIMEOUT_S) -> ListenTarget:
    """Resolve a listen address to exactly one bindable target.

    Args:
        address: the ``listen`` string of a proxy; ``""`` means every interface, port 0.
        timeout_s: bound on the hostname lookup.

    Returns:
        The target; a hostname becomes its first IPv4 address (else its first IPv6 one).

    Raises:
        ListenError: with Go-like text (``listen tcp: address x: missing port in address``,
            ``listen tcp: lookup x: no such host``).
    """
    try:
        if address == "":
            host, port_text = "", "0"
        else:
            host, port_text = split_host_port(address)
        port = _parse_port(address, port_text)
    except ListenError as exc:
        raise ListenError(f"listen tcp: {exc}") from None
    if host in _WILDCARD_HOSTS:
        family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
        return ListenTarget("", port, family)
    literal = _ip_literal(host)
    if literal is not None:
        return literal_target(literal, port)
    return await _resolve_name(host, port, timeout_s)


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def literal_target(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> ListenTarget:
    """Return the target for an IP literal."""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return ListenTarget(str(ip), port, family)


async def _resolve_name(host: str, port: int, timeout_s: float) -> ListenTarget:
    not_found = ListenError(f"listen tcp: lookup {host}: no such host")
    # Only well-formed names reach the resolver: anything else cannot resolve, and a
    # resolver fed odd bytes may stall on DNS we do not have.
    if not _HOSTNAME_RE.match(host):
        raise not_found
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout_s
        )
    except (OSError, UnicodeError, ValueError, TimeoutError):
        raise not_found from None
    for wanted in (socket.AF_INET, socket.AF_INET6):
        for family, _type, _proto, _canon, sockaddr in infos:
            if family == wanted:
                return ListenTarget(str(sockaddr[0]), port, wanted)
    raise not_found


def bind_listener(target: ListenTarget) -> socket.socket:
    """Bind and listen on one non-blocking socket for ``target``.

    ``SO_REUSEADDR`` is set so a proxy can be re-enabled on its port while connections
    of its previous life sit in TIME_WAIT.

    Raises:
        ListenError: ``listen tcp <addr>: bind: <os error>``.
    """
    wildcard = target.host == ""
    host = target.host or ("::" if target.family == socket.AF_INET6 else "0.0.0.0")
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if wildcard and target.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, target.port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ListenError(f"listen tcp {target.display()}: bind: {reason}") from None
    return sock


def bound_address(sock: socket.socket) -> str:
    """Return the bound address of ``sock`` as Toxiproxy reports it."""
    name = sock.getsockname()
    return format_hostport(str(name[0]), int(name[1]))
