"""Outbound HTTP to user-given URLs (alert destinations), behind the SSRF rules.

- the scheme is https (http only with BOTPULSE_ALERTS_ALLOW_HTTP);
- every address the host resolves to must be public: not loopback, private, shared (CGNAT),
  link-local (which holds the cloud metadata address 169.254.169.254), multicast, reserved or
  unspecified, for IPv4 and IPv6, including IPv4 embedded in IPv6 (mapped, 6to4, Teredo, NAT64)
  — unless it lies in a network the operator allows (BOTPULSE_ALERTS_ALLOW_NETWORKS);
- the connection goes to the very address that was checked: the resolver below checks and
  returns the addresses aiohttp connects to, so a DNS answer cannot change between the check
  and the connection (rebinding);
- redirects are never followed; a response body is read up to a size cap, within a timeout.

- the host checked is the one aiohttp connects to: yarl, aiohttp's URL parser, derives it, and
  a host aiohttp takes for an IP address (which it connects to without resolving) must be a
  canonical address that passes;
- a refusal tells the account no more than "not a public address": not the address a name
  resolved to, nor (at creation) whether it resolved at all; the operator's log has the detail.
  At delivery a name that does not resolve is retried (`Unresolved`), not refused.

`check_url` runs at creation (the account API) and again before every delivery.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.helpers import is_ip_address
from yarl import URL

from botpulse.runtime.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
USER_AGENT = "botpulse-alerts/1"


# What a refusal says to the account that asked: never the address a name resolved to, nor
# whether it resolved at all (both would make the API an oracle for the internal DNS).
NOT_PUBLIC = "host not allowed (it does not resolve to a public address)"
_NOT_PUBLIC_LITERAL = "host not allowed (not a public address)"
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # deprecated (RFC 3879), yet `is_global` here


class Refused(Exception):
    """The URL, or an address its host resolves to, is not allowed. The message is what the
    account is told; `detail` (for the operator's log) may name the address."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


class Unresolved(Exception):
    """The host did not resolve (no such name, a DNS failure, or no answer in time): refused at
    creation, retried at delivery (DNS failures pass)."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


def allowed_networks(settings: Settings) -> list[IPNetwork]:
    """BOTPULSE_ALERTS_ALLOW_NETWORKS: comma-separated CIDRs (validated at start-up)."""
    text = settings.alerts_allow_networks.strip()
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, allowed: list[IPNetwork]) -> str | None:
    """Why `ip` may not be contacted, or None when it may."""
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            reason = refusal(inner, allowed)
            return f"{reason} (embedded in {ip})" if reason else None
    if ip in _METADATA:
        return f"{ip} is the cloud metadata address"
    for test, what in (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.version == 6 and ip in _SITE_LOCAL, "site-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not a public address"),
    ):
        if test:
            return f"{ip} is {what}"
    return None


def _check_host_name(host: str) -> None:
    """A DNS name the resolver can take: labels of 1-63 characters, 253 in all (the IDNA
    codec raises on anything else, which must be a refusal and not a crash)."""
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or any(not 1 <= len(label) <= 63 for label in name.split(".")):
        raise Refused("host is not a valid host name")


def check_url(url: str | URL, settings: Settings) -> URL:
    """The URL as aiohttp will use it, if allowed; `Refused` says what is wrong with it.

    The host is the one yarl (aiohttp's own URL parser) derives, so the check sees what the
    connection will: yarl maps e.g. fullwidth digits (U+FF10…) to ASCII ones, so 127.0.0.1 in
    fullwidth digits is 127.0.0.1.
    A host aiohttp takes for an IP address connects without our resolver, so it must be an
    address `ipaddress` reads and allows (decimal, octal or short forms such as `2130706433`,
    `0177.0.0.1`, `127.1` are refused)."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        host = parsed.raw_host
        port = parsed.port
        credentials = parsed.user is not None or parsed.password is not None
        credentials = credentials or "@" in (parsed.raw_authority or "")
    except (ValueError, TypeError):  # UnicodeError is a ValueError
        raise Refused("not a valid URL") from None
    if parsed.scheme != "https" and not (parsed.scheme == "http" and settings.alerts_allow_http):
        raise Refused(
            "must be an https URL" + ("" if settings.alerts_allow_http else " (http is not allowed here)")
        )
    if not host or not port:
        raise Refused("has no host" if not host else "has no valid port")
    if credentials:
        raise Refused("must not carry credentials")
    if is_ip_address(host):
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            raise Refused("host not allowed (not a canonical IP address)") from None
        if reason := refusal(literal, allowed_networks(settings)):
            raise Refused(_NOT_PUBLIC_LITERAL, f"{host}: {reason}")
    else:
        _check_host_name(host)
    return parsed


async def resolve_checked(host: str, port: int, settings: Settings) -> list[IPAddress]:
    """Every address `host` resolves to, if all of them are allowed (one forbidden address
    refuses the host: which one a client would pick is not ours to guess). The lookup is bounded
    by BOTPULSE_ALERTS_TIMEOUT_S, as the request it serves is."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), settings.alerts_timeout_s
            )
        except TimeoutError:
            raise Unresolved(
                NOT_PUBLIC, f"DNS lookup of {host!r} timed out after {settings.alerts_timeout_s} s"
            ) from None
        except OSError as exc:
            raise Unresolved(NOT_PUBLIC, f"host {host!r} does not resolve ({exc.strerror or exc})") from None
        except ValueError:  # the IDNA codec (UnicodeError), or a NUL in the name
            raise Refused("host is not a valid host name") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    if not addresses:
        raise Unresolved(NOT_PUBLIC, f"host {host!r} does not resolve")
    allowed = allowed_networks(settings)
    for ip in addresses:
        if reason := refusal(ip, allowed):
            raise Refused(NOT_PUBLIC, f"host {host!r} resolves to a forbidden address: {reason}")
    return addresses


async def check_destination(url: str, settings: Settings) -> None:
    """`check_url`, then the resolution of its host (creation time: `Unresolved` is a refusal)."""
    parsed = check_url(url, settings)
    assert parsed.raw_host is not None and parsed.port is not None  # checked above
    await resolve_checked(parsed.raw_host, parsed.port, settings)


class _CheckedResolver(AbstractResolver):
    """Resolves, refuses forbidden answers, and hands aiohttp exactly the checked addresses."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await resolve_checked(host, port, self._settings)
        return [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in addresses
        ]

    async def close(self) -> None:
        return None


class Answer:
    """What came back: the status (None when nothing did), the capped body, the latency."""

    __slots__ = ("body", "error", "headers", "latency_ms", "status")

    def __init__(
        self,
        status: int | None,
        body: bytes,
        latency_ms: int,
        error: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.latency_ms = latency_ms
        self.error = error
        self.headers = headers or {}


class Egress:
    """One client session for every outbound call of a process, behind the rules above."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=_CheckedResolver(self._settings), use_dns_cache=False)
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # a proxy from the environment would connect on our behalf, unchecked
                timeout=aiohttp.ClientTimeout(total=self._settings.alerts_timeout_s),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST `body`; `Refused` when the URL or its addresses are not allowed (nothing is
        sent then). Network failures, DNS failures and timeouts come back as an `Answer` with
        an error (they may pass)."""
        # The URL object checked is the one requested: aiohttp does not parse it again.
        checked = check_url(url, self._settings)
        cap = self._settings.alerts_max_response_bytes
        started = time.monotonic()
        try:
            async with self._client().post(
                checked, data=body, headers=headers, allow_redirects=False
            ) as resp:
                data = bytearray()
                while len(data) < cap and (chunk := await resp.content.read(cap - len(data))):
                    data += chunk
                return Answer(resp.status, bytes(data), _ms_since(started), None, dict(resp.headers))
        except Refused:  # raised inside the resolver
            raise
        except Unresolved as exc:
            return Answer(None, b"", _ms_since(started), exc.detail)
        except aiohttp.ClientConnectorError as exc:
            return Answer(None, b"", _ms_since(started), f"connection failed: {exc.os_error or exc}")
        except TimeoutError:
            return Answer(
                None, b"", _ms_since(started), f"timed out after {self._settings.alerts_timeout_s} s"
            )
        except aiohttp.ClientError as exc:
            return Answer(None, b"", _ms_since(started), f"{type(exc).__name__}: {exc}"[:300])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
