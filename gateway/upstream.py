"""
The upstreams as the proxy talks to them: pooled connections, headers, errors.

Each configured upstream gets one ``http1.Pool`` of keep-alive connections
(``max_connections``), opened on startup and closed on cleanup. Nothing is
decompressed: bytes are relayed as they came. The headers of a request and of
its answer are filtered here, with the name sets built once.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from gateway.config import UpstreamSettings
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.http1 import CannotConnect, ClientError, ForwardProxy, Pool
from gateway.tags import REQUEST_ID_HEADER, is_tag_header

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
# Recomputed or answered by whoever sends the next hop; the request id is the
# gateway's, sent once (the client's own, when it sent one, is that id).
REQUEST_DROPPED = HOP_BY_HOP | {"host", "content-length", "expect", "x-request-id"}
RESPONSE_DROPPED = HOP_BY_HOP | {"content-length"}
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
    base_url: str
    timeout_s: float
    connect_timeout_s: float
    max_connections: int
    # The HTTP proxy the pool goes through, None to connect straight.
    proxy: ForwardProxy | None = None
    pool: Pool | None = None

    @classmethod
    def from_settings(cls, name: str, settings: UpstreamSettings) -> Upstream:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        return cls(
            name=name,
            provider=settings.provider or name,
            authorization=f"Bearer {key}" if key else None,
            base_url=str(settings.base_url),
            timeout_s=settings.timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            max_connections=settings.max_connections,
            proxy=settings.proxy,
        )

    def open(self) -> None:
        """Make the connection pool; call it with the event loop running."""
        self.pool = Pool(
            self.base_url,
            max_connections=self.max_connections,
            connect_timeout_s=self.connect_timeout_s,
            timeout_s=self.timeout_s,
            proxy=self.proxy,
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


@contextlib.asynccontextmanager
async def open_pools(upstreams: Iterable[Upstream]) -> AsyncIterator[None]:
    """Open every upstream's pool; close them all on the way out."""
    opened = list(upstreams)
    for upstream in opened:
        upstream.open()
    try:
        yield
    finally:
        for upstream in opened:
            upstream.close()


def connection_named(headers: Mapping[str, str]) -> frozenset[str]:
    """The extra hop-by-hop names a Connection header lists, besides the usual."""
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return names_in_connection(value)


@functools.lru_cache(maxsize=256)
def names_in_connection(value: str) -> frozenset[str]:
    return extra_hop_names(frozenset(part.strip().lower() for part in value.split(",")))


@functools.lru_cache(maxsize=256)
def extra_hop_names(tokens: frozenset[str]) -> frozenset[str]:
    """The header names Connection *tokens* make hop-by-hop besides the usual."""
    # "keep-alive" and "close" are the common values, and name nothing new.
    return tokens - HOP_BY_HOP - {"close"}


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
    request_id: str,
    drop_authorization: bool,
    identity_encoding: bool,
    authorization: str | None = None,
) -> list[tuple[str, str]]:
    """
    Return the request headers to send upstream, in the order they came.

    Hop-by-hop headers, Host, Content-Length and the tag headers go; with
    *drop_authorization* the client's key goes too (it was a gateway key);
    *authorization* (the upstream's own key) is sent when the client's is not;
    with *identity_encoding* the answer is asked for uncompressed, because the
    gateway reads its usage. *request_id* goes as X-Request-Id.
    """
    named = connection_named(headers) if "Connection" in headers else None
    kept = []
    sends_key = False
    for name, value in headers.items():
        kind = request_header_kind(name)
        if kind == DROP or (named and name.lower() in named):
            continue
        if kind == AUTHORIZATION:
            if drop_authorization:
                continue
            sends_key = True
        if kind == ACCEPT_ENCODING and identity_encoding:
            continue
        kept.append((name, value))
    if identity_encoding:
        kept.append(("Accept-Encoding", "identity"))
    if authorization is not None and not sends_key:
        kept.append(("Authorization", authorization))
    kept.append((REQUEST_ID_HEADER, request_id))

    return kept


def headers_for_client(
    headers: Iterable[tuple[str, str]], connection: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """
    Return the upstream's answer headers to relay, hop-by-hop ones removed.

    *connection* holds the lower-case tokens of the answer's Connection header,
    which name more hop-by-hop headers.
    """
    named = extra_hop_names(connection) if connection else None
    kept = []
    for name, value in headers:
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
    # Timeouts first: a connect timeout is a connection error too.
    except TimeoutError as exc:
        raise UpstreamTimeout(f"upstream {name} did not answer in time") from exc
    except CannotConnect as exc:
        raise UpstreamError(f"upstream {name} could not be reached") from exc
    except ClientError as exc:
        raise UpstreamError(
            f"upstream {name} failed: {type(exc).__name__}: {exc}"
        ) from exc
