"""
The upstreams as the proxy talks to them: pooled sessions, headers, errors.

Each configured upstream gets one ``aiohttp.ClientSession`` with its own
keep-alive pool (``max_connections``), opened on startup and closed on cleanup.
Sessions never decompress: bytes are relayed as they came. The headers of a
request and of its answer are filtered here, with the name sets built once.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from gateway.config import UpstreamSettings
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.tags import is_tag_header

# RFC 9110 7.6.1: meaningful for one connection only, never relayed.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed or answered by whoever sends the next hop.
REQUEST_DROPPED = HOP_BY_HOP | {"host", "content-length", "expect"}
RESPONSE_DROPPED = HOP_BY_HOP | {"content-length"}
# aiohttp would otherwise add its own; only what the client sent goes upstream.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# The upstream's own request id, relayed under this name: X-Request-Id on the
# answer is the gateway's id, the one stored with the row.
UPSTREAM_REQUEST_ID = "X-Upstream-Request-Id"


@dataclass(slots=True)
class Upstream:
    """One configured upstream with what every call to it shares."""

    name: str
    # The catalog provider id pricing looks it up under.
    provider: str
    # "Bearer <api_key>", or None when the upstream holds no key.
    authorization: str | None
    timeout: aiohttp.ClientTimeout
    max_connections: int
    session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, name: str, settings: UpstreamSettings) -> Upstream:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        return cls(
            name=name,
            provider=settings.provider or name,
            authorization=f"Bearer {key}" if key else None,
            timeout=aiohttp.ClientTimeout(
                total=settings.timeout_s, connect=settings.connect_timeout_s
            ),
            max_connections=settings.max_connections,
        )

    def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, limit_per_host=self.max_connections
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            auto_decompress=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
            # Relayed as sent: no cookie jar shared between clients.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


@contextlib.asynccontextmanager
async def open_sessions(upstreams: Iterable[Upstream]) -> AsyncIterator[None]:
    """Open every upstream's session; close them all on the way out."""
    opened = list(upstreams)
    for upstream in opened:
        upstream.open()
    try:
        yield
    finally:
        for upstream in opened:
            await upstream.close()


def connection_named(headers: Mapping[str, str]) -> frozenset[str]:
    """The extra hop-by-hop names a Connection header lists, besides the usual."""
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return names_in_connection(value)


@functools.lru_cache(maxsize=256)
def names_in_connection(value: str) -> frozenset[str]:
    # "keep-alive" and "close" are the common values, and name nothing new.
    named = {part.strip().lower() for part in value.split(",")}
    return frozenset(named - HOP_BY_HOP - {"close"})


# What becomes of a request header, by name (see request_header_kind).
KEEP, DROP, AUTHORIZATION, ACCEPT_ENCODING = range(4)


@functools.lru_cache(maxsize=1024)
def request_header_kind(name: str) -> int:
    """Return what happens to request header *name*; clients repeat names."""
    lower = name.lower()
    if lower in REQUEST_DROPPED or is_tag_header(lower):
        return DROP
    if lower == "authorization":
        return AUTHORIZATION
    if lower == "accept-encoding":
        return ACCEPT_ENCODING
    return KEEP


@functools.lru_cache(maxsize=1024)
def response_header_name(name: str) -> str | None:
    """Return the name answer header *name* is relayed under; None drops it."""
    lower = name.lower()
    if lower in RESPONSE_DROPPED:
        return None
    if lower == "x-request-id":
        return UPSTREAM_REQUEST_ID
    return name


def headers_for_upstream(
    headers: Mapping[str, str],
    *,
    drop_authorization: bool,
    identity_encoding: bool,
) -> CIMultiDict[str]:
    """
    Return the request headers to send upstream.

    Hop-by-hop headers, Host, Content-Length and the tag headers go; with
    *drop_authorization* the client's key goes too (it was a gateway key);
    with *identity_encoding* the answer is asked for uncompressed, because the
    gateway reads its usage.
    """
    named = connection_named(headers) if "Connection" in headers else None
    kept = []
    for name, value in headers.items():
        kind = request_header_kind(name)
        if kind == DROP or (named and name.lower() in named):
            continue
        if kind == AUTHORIZATION and drop_authorization:
            continue
        if kind == ACCEPT_ENCODING and identity_encoding:
            continue
        kept.append((name, value))
    out = CIMultiDict(kept)
    if identity_encoding:
        out["Accept-Encoding"] = "identity"
    return out


def headers_for_client(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Return the upstream's answer headers to relay, hop-by-hop ones removed."""
    named = connection_named(headers) if "Connection" in headers else None
    kept = []
    for name, value in headers.items():
        relayed = response_header_name(name)
        if relayed is None or (named and name.lower() in named):
            continue
        kept.append((relayed, value))
    return CIMultiDict(kept)


@contextlib.contextmanager
def upstream_errors(name: str) -> Iterator[None]:
    """Map failures before the upstream's headers arrive onto 502 and 504."""
    try:
        yield
    # Timeouts first: aiohttp's ServerTimeoutError is a connection error too.
    except TimeoutError as exc:
        raise UpstreamTimeout(f"upstream {name} did not answer in time") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(
            f"upstream {name} could not be reached: {type(exc).__name__}"
        ) from exc
