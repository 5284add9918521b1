"""The outbound policy: where Parley may send an HTTP request on a user's behalf, and the one way to send it.

Custom tools, lifecycle events and the number's ``chat_inbound`` webhook call URLs that API callers and agent
files name, and a tool's answer is read back to the texter. Unchecked, such a URL reaches Parley's own
network: its loopback interface, a private service, a cloud metadata endpoint (``169.254.169.254``).
``OutboundPolicy`` stands in the way three times:

1. ``check_url``, when a URL is written (agent and number files, the API) and before every request: http or
   https, a host, no credentials in the URL; a literal IP address or ``localhost`` is judged at once. No DNS
   here: a host may not resolve from the machine that checks the files.
2. After DNS. The sessions it builds (``session``) resolve names through ``PolicyResolver``, which drops every
   forbidden address and refuses a name left with none. aiohttp connects only to the addresses the resolver
   gave it, so the address checked is the address connected to: no second lookup for DNS rebinding to race.
3. On every request, redirects included: the session's middleware runs ``check_url`` on each request's URL
   before it connects, because aiohttp asks no resolver about a literal IP.

``fetch`` sends one request through such a session. It never lets aiohttp follow a redirect: it follows at
most ``MAX_REDIRECTS`` itself, checking each location like the first URL, and keeps the caller's headers
(credentials, signatures) for the first origin. It reads at most ``max_bytes`` of the answer and gives up
after ``timeout_s`` in all.

MCP servers are reached through the ``mcp`` SDK, whose HTTP client is httpx2, not aiohttp: ``httpx_client``
builds one that enforces the same policy from an aiohttp policy session. Its request hook runs ``check_url`` on
every request (the SDK follows redirects itself, only within the first origin), and its connections go through
``PolicyBackend``, which connects only to an address ``PolicyResolver`` allowed, for names and literal IPs.

Operators who need internal targets list them in ``PARLEY_OUTBOUND_ALLOW`` (CIDRs, and host names allowed
whatever they resolve to). The LLM and Twilio clients do not come through here: their URLs are the
operator's own settings, not a user's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
import httpcore2
import httpx2
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver, ResolveResult
from httpcore2 import SOCKET_OPTION
from yarl import URL

from service.errors import OutboundRefused
from service.settings import Settings

ALLOW_SETTING = "PARLEY_OUTBOUND_ALLOW"
PASSED_CAP = 1_024   # URLs an OutboundPolicy remembers as allowed (webhook, tool and event URLs)
MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# What a redirect to another origin carries on; the caller's other headers (credentials, signatures) were meant
# for the first origin only.
_CROSS_ORIGIN_HEADERS = frozenset({"content-type", "accept", "user-agent"})
# RFC 7230's token: what a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# First match wins: the narrow entries (metadata, broadcast) come before the blocks that contain them.
_FORBIDDEN: tuple[tuple[Network, str], ...] = tuple((ipaddress.ip_network(net), why) for net, why in (
    ("169.254.169.254/32", "a cloud metadata address"),
    ("fd00:ec2::254/128", "a cloud metadata address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("0.0.0.0/8", "an unspecified address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("192.0.0.0/24", "a reserved address"),
    ("198.18.0.0/15", "a reserved (benchmarking) address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "an IPv4-compatible address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("fc00::/7", "a unique-local (private) address"),
    ("ff00::/8", "a multicast address"),
))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries to (IPv4-mapped, NAT64, 6to4), or None."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def forbidden(address: Address) -> str | None:
    """Why Parley may not connect to ``address`` by default (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and (inner := _embedded_v4(address)) is not None:
        why = forbidden(inner)
        return f"an IPv6 form of {inner}, {why}" if why else None
    return next((why for network, why in _FORBIDDEN if address in network), None)


def header_problem(name: str, value: str) -> str | None:
    """What is wrong with an outbound header (None: nothing). aiohttp raises on CR or LF, and a NUL is cut
    short by servers: both would let a header smuggle another."""
    if not _TOKEN.fullmatch(name):
        return f"{name!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
    if any(c in value for c in "\r\n\0"):
        return "the value contains a line break (CR or LF) or a NUL, which a header may not"
    return None


def _origin(url: URL) -> str:
    """What a message may show of a URL: scheme, host and port; never its path, query or credentials."""
    try:
        return str(url.origin())
    except ValueError:   # not an absolute URL
        return f"{url.scheme or '?'}://{url.raw_host or ''}"


def _host(raw: str) -> str:
    return raw.lower().removeprefix("[").removesuffix("]").rstrip(".")  # pragma: no mutate (lowered: "XX.XX" alike)


def _literal(host: str) -> Address | None:
    """``host`` as an IP address when it is one; a numeric form the OS would also read as IPv4 (``127.1``,
    ``2130706433``, ``0x7f.1``) is refused outright, so no two spellings of an address are judged apart."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return None
    raise OutboundRefused(f"{host!r} is an IPv4 address written in a legacy numeric form: write it as four "
                          "decimal numbers (a.b.c.d)")


def _refused(what: str, why: str) -> OutboundRefused:
    """A refusal that says what, why, and how an operator would allow it."""
    return OutboundRefused(f"{what} is not allowed: {why}. Parley calls no internal address on a user's behalf "
                           f"unless {ALLOW_SETTING} lists it")


class OutboundPolicy:
    """Which URLs and addresses Parley may reach on a user's behalf: everything public, plus what
    ``PARLEY_OUTBOUND_ALLOW`` lists."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._networks: list[Network] = []
        self._hosts: set[str] = set()
        # URLs ``check_url`` let through (it reads nothing but the URL and the allowlist, which never changes):
        # an event's URL, checked before each request and again as it leaves, is parsed once.
        self._passed: dict[str | URL, URL] = {}
        for entry in allow:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))  # pragma: no mutate (None: as falsy)
            except ValueError:
                self._hosts.add(_host(entry))

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        return cls(settings.outbound_allow)

    def allows_host(self, host: str) -> bool:
        """Whether the allowlist names this host (then it is allowed whatever it resolves to)."""
        return _host(host) in self._hosts

    def refusal(self, address: Address) -> str | None:
        """Why Parley may not connect to ``address`` (None: it may)."""
        inner = _embedded_v4(address) if isinstance(address, ipaddress.IPv6Address) else None
        if any(address in network or (inner is not None and inner in network) for network in self._networks):
            return None
        return forbidden(address)

    def check_url(self, url: str | URL) -> URL:
        """``url`` parsed, if a request may go there as far as can be told without DNS; else ``OutboundRefused``."""
        passed = self._passed.get(url)
        if passed is None:
            passed = self._check_url(url)
            if len(self._passed) >= PASSED_CAP:
                self._passed.clear()
            self._passed[url] = passed
        return passed

    def _check_url(self, url: str | URL) -> URL:
        try:
            parsed = URL(url)   # a URL is returned as it is
        except (ValueError, TypeError):
            raise OutboundRefused("the URL is not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise OutboundRefused(f"{_origin(parsed)}: only http and https URLs may be called")
        if not parsed.raw_host:
            raise OutboundRefused(f"{_origin(parsed)}: the URL has no host")
        if parsed.raw_user is not None or parsed.raw_password is not None:
            raise OutboundRefused(f"{_origin(parsed)}: the URL carries credentials (user@host), which Parley does "
                                  "not send: put them in a header")
        host = _host(parsed.raw_host)
        if host in self._hosts:
            return parsed
        if host == "localhost" or host.endswith(".localhost"):
            raise _refused(_origin(parsed), f"{host} is this machine")
        address = _literal(host)
        if address is not None and (why := self.refusal(address)) is not None:
            raise _refused(_origin(parsed), f"{address} is {why}")
        return parsed

    def session(self, *, resolver: AbstractResolver | None = None) -> aiohttp.ClientSession:
        """An HTTP session that enforces this policy on every request; ``resolver`` answers DNS (aiohttp's
        default when None). Close it (``async with``) like any session."""
        conn = PolicyConnector(self, PolicyResolver(self, resolver or aiohttp.DefaultResolver()))
        checks = (self._check_request,)
        # trust_env=False is aiohttp's default (so None, or leaving it out, is alike), said because a proxy from the
        # environment would bypass the policy.
        return aiohttp.ClientSession(connector=conn, middlewares=checks, trust_env=False)  # pragma: no mutate (default)

    async def _check_request(self, request: aiohttp.ClientRequest,
                             handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        # Every request, and every redirect aiohttp would follow, is checked before it connects.
        self.check_url(request.url)
        return await handler(request)


class PolicyResolver(AbstractResolver):
    """Resolves through ``inner`` and keeps only the addresses the policy allows (all of them for a host the
    allowlist names); a host left with none is refused."""

    def __init__(self, policy: OutboundPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(self, host: str, port: int = 0,  # pragma: no mutate (aiohttp always passes the port)
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self._policy.allows_host(host):
            return found
        kept: list[ResolveResult] = []
        refused: list[tuple[str, str]] = []
        for result in found:
            try:
                why = self._policy.refusal(ipaddress.ip_address(result["host"]))
            except ValueError:
                why = "not an IP address"
            if why is None:
                kept.append(result)
            else:
                refused.append((result["host"], why))
        if not kept:
            shown = "; ".join(f"{address} is {why}" for address, why in refused) or "no address at all"
            raise _refused(host, f"it resolves only to addresses Parley may not call ({shown})")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class PolicyConnector(aiohttp.TCPConnector):
    """A connector that resolves through the policy, and says which policy it enforces."""

    def __init__(self, policy: OutboundPolicy, resolver: PolicyResolver) -> None:
        super().__init__(resolver=resolver)
        self.policy = policy
        self.resolver = resolver

    # abort_ssl only changes how TLS connections are dropped on close, which no test here can see.
    async def close(self, *, abort_ssl: bool = False) -> None:  # pragma: no mutate (see above)
        await super().close(abort_ssl=abort_ssl)  # pragma: no mutate (see above)
        await self.resolver.close()   # passed in, so aiohttp leaves it open


def policy_of(session: aiohttp.ClientSession) -> PolicyConnector:
    """The policy connector of a session ``OutboundPolicy.session`` built; TypeError for any other session."""
    if not isinstance(session.connector, PolicyConnector):
        raise TypeError("needs a session built by OutboundPolicy.session()")
    return session.connector


class PolicyBackend(httpcore2.AsyncNetworkBackend):
    """httpcore2's network backend under the policy: a host name is resolved by ``PolicyResolver`` and the
    connection made to an address it kept; a literal IP is judged first. TLS still verifies the host name
    (httpcore2 passes it as the server name)."""

    def __init__(self, connector: PolicyConnector) -> None:
        self._policy = connector.policy
        self._resolver = connector.resolver
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's)
                          local_address: str | None = None,
                          socket_options: Iterable[SOCKET_OPTION] | None = None) -> httpcore2.AsyncNetworkStream:
        address = _literal(_host(host))
        if address is not None:
            if not self._policy.allows_host(host) and (why := self._policy.refusal(address)) is not None:
                raise _refused(host, f"{address} is {why}")
            target = str(address)
        else:
            target = (await self._resolver.resolve(host, port, socket.AF_UNSPEC))[0]["host"]
        return await self._inner.connect_tcp(target, port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's)
                                  socket_options: Iterable[SOCKET_OPTION] | None = None,
                                  ) -> httpcore2.AsyncNetworkStream:
        raise OutboundRefused("Parley does not connect to Unix sockets on a user's behalf")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PolicyTransport(httpx2.AsyncHTTPTransport):
    def __init__(self, connector: PolicyConnector) -> None:
        super().__init__(trust_env=False)  # pragma: no mutate (the pool it builds is replaced below)
        # httpx2 takes no network backend, so its pool is replaced by one with the policy's (same settings). TLS
        # verifies certificates whatever the context's trust_env (it only lets SSL_CERT_FILE/DIR choose the CAs).
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),  # pragma: no mutate (see above)
            network_backend=PolicyBackend(connector))


def httpx_client(session: aiohttp.ClientSession, *, headers: Mapping[str, str],
                 timeout_s: float) -> httpx2.AsyncClient:
    """An httpx2 client (the ``mcp`` SDK's) that obeys the policy of ``session`` (``OutboundPolicy.session``):
    each request's URL is checked before it is sent, and each connection goes to an address the policy
    allows, after DNS. It follows no redirect on its own (the MCP SDK follows same-origin ones, each checked)."""
    connector = policy_of(session)

    async def check(request: httpx2.Request) -> None:
        connector.policy.check_url(str(request.url))

    return httpx2.AsyncClient(headers=dict(headers), timeout=httpx2.Timeout(timeout_s), follow_redirects=False,
                              trust_env=False, transport=_PolicyTransport(connector),
                              event_hooks={"request": [check]})


@dataclass(frozen=True, slots=True)
class Fetched:
    """An answer: its status, content type, and at most ``max_bytes`` of its body (``truncated`` if cut)."""

    status: int
    content_type: str
    body: bytes
    truncated: bool


async def fetch(
    session: aiohttp.ClientSession, method: str, url: str, *, timeout_s: float, max_bytes: int,
    headers: Mapping[str, str] | None = None, data: bytes | None = None, params: Mapping[str, str] | None = None,
) -> Fetched:
    """Send one request through a policy session (``OutboundPolicy.session``), following up to
    ``MAX_REDIRECTS`` redirects, each checked. Raises ``OutboundRefused``, ``TimeoutError`` (``timeout_s``
    covers every hop and the body) or an ``aiohttp.ClientError``."""
    policy = policy_of(session).policy
    target = policy.check_url(url)
    sent = dict(headers or {})
    async with asyncio.timeout(timeout_s):   # every hop and the body: no per-request timeout needed
        for hop in itertools.count():
            async with session.request(method, target, params=params if hop == 0 else None, data=data, headers=sent,
                                       allow_redirects=False) as answer:  # pragma: no mutate (None: as falsy)
                location = answer.headers.get(hdrs.LOCATION) if answer.status in REDIRECT_STATUSES else None
                if location is None:
                    body, truncated = await _read(answer, max_bytes)
                    return Fetched(answer.status, answer.content_type, body, truncated)
                status = answer.status
            if hop == MAX_REDIRECTS:
                break
            previous, target = target, _follow(policy, target, location)
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, data = hdrs.METH_GET, None   # what browsers (and aiohttp) do
            if target.origin() != previous.origin():
                sent = {k: v for k, v in sent.items() if k.lower() in _CROSS_ORIGIN_HEADERS}
    raise OutboundRefused(f"{_origin(URL(url))} redirected more than {MAX_REDIRECTS} times: Parley follows at "
                          f"most {MAX_REDIRECTS} redirects (point the URL at where it ends up)")


def _follow(policy: OutboundPolicy, current: URL, location: str) -> URL:
    """Where a redirect leads, checked like the first URL."""
    try:
        target = current.join(URL(location))
    except ValueError:
        raise OutboundRefused(f"{_origin(current)} redirected to something that is not a URL") from None
    try:
        return policy.check_url(target)
    except OutboundRefused as exc:
        raise OutboundRefused(f"the redirect from {_origin(current)} was refused: {exc}") from None


async def _read(answer: aiohttp.ClientResponse, max_bytes: int) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of the body, and whether there was more (the rest is never read)."""
    body = bytearray()
    while len(body) < max_bytes:
        chunk = await answer.content.read(max_bytes - len(body))
        if not chunk:
            return bytes(body), False
        body += chunk
    return bytes(body), bool(await answer.content.read(1))  # pragma: no mutate (read(2): as truthy)
