"""
The tag headers a client sets on a call, read and checked.

``X-Purpose``, ``X-Ticker``, ``X-Cycle-Id`` and ``X-Tag-<name>`` describe what
a call was for; they are stored with its row and never forwarded upstream.
``X-Request-Id`` names the call; it is kept when the client sends one. Values
come from outside, so each is bounded and must be printable text: a bad one is
refused with a 400 that names the header, never stored cut or cleaned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.errors import BadTagHeader
from gateway.record import new_request_id

MAX_VALUE_CHARS = 128
MAX_TAG_NAME_CHARS = 64
MAX_TAGS = 16
MAX_REQUEST_ID_CHARS = 128

TAG_PREFIX = "x-tag-"
# Lower-case header name -> field of CallTags.
NAMED_TAGS = {"x-purpose": "purpose", "x-ticker": "ticker", "x-cycle-id": "cycle_id"}
REQUEST_ID_HEADER = "X-Request-Id"

_TAG_NAME = re.compile(rf"[a-z0-9_\-]{{1,{MAX_TAG_NAME_CHARS}}}")
# Visible ASCII only: the id goes into logs and other systems' headers.
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")


@dataclass(slots=True)
class CallTags:
    purpose: str | None = None
    ticker: str | None = None
    cycle_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def admission_view(self) -> dict[str, str | None]:
        """The tags as the admission checks receive them."""
        return {
            "purpose": self.purpose,
            "ticker": self.ticker,
            "cycle_id": self.cycle_id,
        }


def is_tag_header(lower_name: str) -> bool:
    return lower_name in NAMED_TAGS or lower_name.startswith(TAG_PREFIX)


def read_tags(headers: Mapping[str, str]) -> CallTags:
    """
    Return the tags of a call from its request *headers*.

    Raise BadTagHeader (400) naming the first header that is too long, not
    printable, repeated, badly named, or one tag too many.
    """
    found = CallTags()
    seen: set[str] = set()
    for name, value in headers.items():
        # Cheap first look: every tag header starts with "x-".
        if not name.startswith(("X-", "x-")):
            continue
        lower = name.lower()
        if not is_tag_header(lower):
            continue
        if lower in seen:
            raise BadTagHeader(f"header {name} is given more than once", param=name)
        seen.add(lower)
        text = check_value(name, value)
        attr = NAMED_TAGS.get(lower)
        if attr is not None:
            setattr(found, attr, text)
            continue
        tag = lower[len(TAG_PREFIX) :]
        if not _TAG_NAME.fullmatch(tag):
            raise BadTagHeader(
                f"header {name}: a tag name is 1 to {MAX_TAG_NAME_CHARS} of "
                "a-z, 0-9, '_' and '-'",
                param=name,
            )
        if len(found.tags) >= MAX_TAGS:
            raise BadTagHeader(f"at most {MAX_TAGS} X-Tag-* headers", param=name)
        if text is not None:
            found.tags[tag] = text
    return found


def check_value(name: str, value: str) -> str | None:
    """Return the stripped *value* of tag header *name*, None when empty."""
    text = value.strip()
    if len(text) > MAX_VALUE_CHARS:
        raise BadTagHeader(
            f"header {name} is longer than {MAX_VALUE_CHARS} characters", param=name
        )
    # isprintable() refuses control characters and the surrogates that stand
    # for bytes that were not UTF-8.
    if not text.isprintable():
        raise BadTagHeader(f"header {name} holds non-printable characters", param=name)
    return text or None


def read_request_id(headers: Mapping[str, str]) -> str:
    """Return the client's ``X-Request-Id``, or a new one when it sent none."""
    given = headers.get(REQUEST_ID_HEADER)
    if given is None or not given.strip():
        return new_request_id()
    given = given.strip()
    if not _REQUEST_ID.fullmatch(given):
        raise BadTagHeader(
            f"header {REQUEST_ID_HEADER} must be 1 to {MAX_REQUEST_ID_CHARS} "
            "visible ASCII characters",
            param=REQUEST_ID_HEADER,
        )
    return given
