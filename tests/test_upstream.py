from __future__ import annotations

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.upstream import (
    UPSTREAM_REQUEST_ID,
    headers_for_client,
    headers_for_upstream,
    upstream_errors,
)


def client_headers() -> CIMultiDict[str]:
    return CIMultiDict(
        [
            ("Host", "gateway:5611"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "only this hop"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "12"),
            ("Proxy-Authorization", "Basic abc"),
            ("Upgrade", "h2c"),
            ("Authorization", "Bearer sk-client"),
            ("Content-Type", "application/json"),
            ("Accept-Encoding", "gzip, br"),
            ("OpenAI-Organization", "org-1"),
            ("X-Purpose", "signal"),
            ("X-Tag-Run", "7"),
            ("X-Custom", "kept"),
        ]
    )


def test_hop_by_hop_and_tag_headers_stay_behind() -> None:
    sent = headers_for_upstream(
        client_headers(), drop_authorization=False, identity_encoding=False
    )

    assert dict(sent) == {
        "Authorization": "Bearer sk-client",
        "Content-Type": "application/json",
        "Accept-Encoding": "gzip, br",
        "OpenAI-Organization": "org-1",
        "X-Custom": "kept",
    }


def test_accounted_calls_ask_for_identity_and_gateway_keys_are_dropped() -> None:
    sent = headers_for_upstream(
        client_headers(), drop_authorization=True, identity_encoding=True
    )

    assert "Authorization" not in sent
    assert sent.getall("Accept-Encoding") == ["identity"]


def test_answer_headers_pass_back_except_hop_by_hop_ones() -> None:
    answer = CIMultiDict(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", "99"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("retry-after", "7"),
            ("x-ratelimit-remaining-tokens", "10"),
            ("openai-processing-ms", "23"),
            ("x-request-id", "req_abc"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ]
    )

    relayed = headers_for_client(answer)

    assert list(relayed.items()) == [
        ("Content-Type", "application/json"),
        ("retry-after", "7"),
        ("x-ratelimit-remaining-tokens", "10"),
        ("openai-processing-ms", "23"),
        (UPSTREAM_REQUEST_ID, "req_abc"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_timeouts_map_to_504_and_other_client_errors_to_502() -> None:
    with pytest.raises(UpstreamTimeout), upstream_errors("openai"):
        raise aiohttp.ServerTimeoutError("slow")
    with pytest.raises(UpstreamError) as caught, upstream_errors("openai"):
        raise aiohttp.ServerDisconnectedError()

    assert caught.value.status == 502
