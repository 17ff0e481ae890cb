"""
Upstream routing: which configured upstream a request goes to, and at what URL.

A proxied path is ``/v1/<rest>`` or ``/<upstream>/v1/<rest>``. The upstream is,
in order: the one the prefix names, the first whose ``models`` globs claim the
request's model, the default one. The URL sent upstream is that upstream's
``base_url`` + ``/<rest>`` + the query string, built from the raw request
target so that nothing is decoded or re-encoded on the way.

The raw target is checked segment by segment before it is used, because a
path that an upstream (or a proxy in front of it) normalises differently than
we do could reach another path, or another host: dot segments, empty segments,
encoded slashes, backslashes and dots, control bytes and absolute URLs are all
refused. Everything here is pure and cheap; the proxy calls it once per call.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.config import UpstreamSettings
from gateway.errors import BadRequest, NotFound

# The endpoints whose calls are priced and recorded; the rest are relayed only.
ACCOUNTED_ENDPOINTS = frozenset(
    {"chat/completions", "completions", "embeddings", "responses"}
)
# Endpoints whose streams the gateway asks for usage when the client did not.
USAGE_OPTION_ENDPOINTS = frozenset({"chat/completions", "completions"})
RESPONSES_ENDPOINT = "responses"

# One path segment in its raw form: RFC 3986 pchar, percent-escapes included.
_SEGMENT = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})+")
# A query is forwarded as sent, so it may hold any visible ASCII byte ("#" is
# refused apart): clients send brackets, quotes and pipes unescaped, and the
# upstream judges them. Spaces, controls and non-ASCII bytes cannot stand in
# a request line and are refused.
_QUERY = re.compile(r"[!-~]*")
# Escapes that decode to a separator or a control byte.
_BAD_ESCAPE = re.compile(r"%(?:2[fF]|5[cC]|[01][0-9A-Fa-f]|7[fF])")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a proxied request goes, as the router resolved it."""

    upstream: str
    # The path after /v1/, raw (still percent-encoded), e.g. "chat/completions".
    rest: str
    # The raw query string without "?", "" when absent.
    query: str
    # The full upstream URL, raw.
    url: str

    @property
    def endpoint(self) -> str:
        """The endpoint as recorded: ``/v1/chat/completions``."""
        return f"/v1/{self.rest}"

    @property
    def is_accounted(self) -> bool:
        return self.rest in ACCOUNTED_ENDPOINTS


@dataclass(frozen=True, slots=True)
class ProxyPath:
    """A checked request target: optional upstream prefix, rest, query."""

    prefix: str | None
    rest: str
    query: str


# Pure, and clients send the same few targets: the checks run once each.
@functools.lru_cache(maxsize=256)
def split_target(raw_target: str) -> ProxyPath:
    """
    Return the parts of a raw request target ``[/<upstream>]/v1/<rest>[?query]``.

    Raise BadRequest for anything that could escape the upstream's base path
    and NotFound for a path that is not a proxied one.
    """
    if not raw_target.startswith("/") or raw_target.startswith("//"):
        raise BadRequest("the request target must be a path starting with one /")
    path, _, query = raw_target.partition("?")
    if "#" in raw_target or not _QUERY.fullmatch(query):
        raise BadRequest("the query string holds characters that are not allowed")
    segments = path[1:].split("/")
    for segment in segments:
        check_segment(segment)

    if segments[0] == "v1":
        prefix, rest = None, segments[1:]
    elif len(segments) >= 2 and segments[1] == "v1":
        prefix, rest = segments[0], segments[2:]
    else:
        raise NotFound(
            f"no proxied route for {path!r}: use /v1/... or /<upstream>/v1/..."
        )
    return ProxyPath(prefix=prefix, rest="/".join(rest), query=query)


def check_segment(segment: str) -> None:
    """Raise BadRequest unless *segment* is a plain, non-empty path segment."""
    if not segment:
        raise BadRequest("empty path segments ('//' or a trailing '/') are not allowed")
    if not _SEGMENT.fullmatch(segment):
        raise BadRequest("the path holds characters that are not allowed")
    if "%" in segment:
        if _BAD_ESCAPE.search(segment):
            raise BadRequest(
                "encoded slashes, backslashes or control bytes in the path"
            )
        segment = unquote(segment)
    if segment in {".", ".."}:
        raise BadRequest("'.' and '..' segments are not allowed in the path")


class Router:
    """Picks an upstream per request; built once from the settings."""

    def __init__(self, upstreams: Mapping[str, UpstreamSettings], default: str) -> None:
        if default not in upstreams:
            raise ValueError(f"default upstream {default!r} is not configured")
        self.default = default
        # Trailing slashes go so that base + "/" + rest has exactly one.
        self.bases = {
            name: str(upstream.base_url).rstrip("/")
            for name, upstream in upstreams.items()
        }
        self.globs = [(name, up) for name, up in upstreams.items() if up.models]

    def pick_upstream(self, prefix: str | None, model: str | None) -> str:
        """Return the upstream for an explicit *prefix*, else *model*, else default."""
        if prefix is not None:
            if prefix not in self.bases:
                raise NotFound(f"no upstream named {prefix!r}")
            return prefix
        if model:
            for name, upstream in self.globs:
                if upstream.claims(model):
                    return name
        return self.default

    def resolve(self, path: ProxyPath, model: str | None) -> Target:
        """Return the target of a checked *path* whose body names *model*."""
        upstream = self.pick_upstream(path.prefix, model)
        url = f"{self.bases[upstream]}/{path.rest}"
        if path.query:
            url = f"{url}?{path.query}"
        return Target(upstream=upstream, rest=path.rest, query=path.query, url=url)
