from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.http1 import (
    BadResponse,
    CannotConnect,
    ConnectTimeout,
    Disconnected,
    ResponseTimeout,
)
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
            ("X-Request-Id", "client-id"),
        ]
    )


def test_hop_by_hop_and_tag_headers_stay_behind() -> None:
    sent = headers_for_upstream(
        client_headers(),
        request_id="tg-1",
        drop_authorization=False,
        identity_encoding=False,
        authorization="Bearer sk-upstream",
    )

    # The client's key wins over the upstream's; the gateway's id goes last.
    assert sent == [
        ("Authorization", "Bearer sk-client"),
        ("Content-Type", "application/json"),
        ("Accept-Encoding", "gzip, br"),
        ("OpenAI-Organization", "org-1"),
        ("X-Custom", "kept"),
        ("X-Request-Id", "tg-1"),
    ]


def test_accounted_calls_ask_for_identity_and_gateway_keys_are_dropped() -> None:
    sent = headers_for_upstream(
        client_headers(),
        request_id="tg-2",
        drop_authorization=True,
        identity_encoding=True,
    )
    names = [name.lower() for name, _ in sent]

    assert "authorization" not in names
    assert [v for n, v in sent if n.lower() == "accept-encoding"] == ["identity"]
    assert names.count("x-request-id") == 1


def test_the_upstreams_key_goes_when_the_clients_does_not() -> None:
    sent = headers_for_upstream(
        client_headers(),
        request_id="tg-3",
        drop_authorization=True,
        identity_encoding=False,
        authorization="Bearer sk-upstream",
    )

    assert [v for n, v in sent if n == "Authorization"] == ["Bearer sk-upstream"]


def test_answer_headers_pass_back_except_hop_by_hop_ones() -> None:
    answer = [
        ("Content-Type", "application/json"),
        ("Content-Length", "99"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "only this hop"),
        ("retry-after", "7"),
        ("x-ratelimit-remaining-tokens", "10"),
        ("openai-processing-ms", "23"),
        ("x-request-id", "req_abc"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]

    relayed = headers_for_client(answer, frozenset({"close", "x-hop"}))

    assert list(relayed.items()) == [
        ("Content-Type", "application/json"),
        ("retry-after", "7"),
        ("x-ratelimit-remaining-tokens", "10"),
        ("openai-processing-ms", "23"),
        (UPSTREAM_REQUEST_ID, "req_abc"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


@pytest.mark.parametrize("error", [ConnectTimeout("slow"), ResponseTimeout("slow")])
def test_timeouts_map_to_504(error: Exception) -> None:
    with pytest.raises(UpstreamTimeout) as caught, upstream_errors("openai"):
        raise error

    assert caught.value.status == 504


@pytest.mark.parametrize(
    "error", [CannotConnect("refused"), Disconnected("gone"), BadResponse("junk")]
)
def test_other_client_errors_map_to_502(error: Exception) -> None:
    with pytest.raises(UpstreamError) as caught, upstream_errors("openai"):
        raise error

    assert caught.value.status == 502
    assert not isinstance(caught.value, UpstreamTimeout)
