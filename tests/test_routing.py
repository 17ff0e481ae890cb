from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import UpstreamSettings
from gateway.errors import BadRequest, NotFound
from gateway.routing import ProxyPath, Router, split_target


def make_router() -> Router:
    return Router(
        {
            "openai": UpstreamSettings(
                base_url="https://api.openai.com/v1", default=True
            ),
            "deepseek": UpstreamSettings(
                base_url="https://api.deepseek.com/v1/", models=["deepseek-*"]
            ),
            "local": UpstreamSettings(
                base_url="http://127.0.0.1:8000/api/v3", models=["llama-*", "qwen*"]
            ),
        },
        "openai",
    )


def test_plain_v1_path_splits_into_rest_and_query() -> None:
    path = split_target("/v1/chat/completions?api-version=2024-01-01")

    assert path == ProxyPath(
        prefix=None, rest="chat/completions", query="api-version=2024-01-01"
    )


def test_prefixed_path_names_the_upstream() -> None:
    assert split_target("/deepseek/v1/models") == ProxyPath("deepseek", "models", "")


def test_explicit_prefix_wins_over_the_model_glob() -> None:
    router = make_router()

    target = router.resolve(
        ProxyPath("openai", "chat/completions", ""), "deepseek-chat"
    )

    assert target.upstream == "openai"
    assert target.url == "https://api.openai.com/v1/chat/completions"


def test_model_glob_picks_the_upstream_and_its_base_path() -> None:
    router = make_router()

    deepseek = router.resolve(
        ProxyPath(None, "chat/completions", "a=1"), "deepseek-chat"
    )
    local = router.resolve(ProxyPath(None, "embeddings", ""), "qwen2.5")

    assert deepseek.url == "https://api.deepseek.com/v1/chat/completions?a=1"
    assert local.url == "http://127.0.0.1:8000/api/v3/embeddings"
    assert local.endpoint == "/v1/embeddings"


def test_unclaimed_or_missing_model_goes_to_the_default() -> None:
    router = make_router()

    assert router.pick_upstream(None, "gpt-4o-mini") == "openai"
    assert router.pick_upstream(None, None) == "openai"


def test_unknown_prefix_is_not_found() -> None:
    with pytest.raises(NotFound):
        make_router().pick_upstream("azure", None)


def test_only_the_four_endpoints_are_accounted() -> None:
    router = make_router()

    def accounted(rest: str) -> bool:
        return router.resolve(ProxyPath(None, rest, ""), None).is_accounted

    assert accounted("chat/completions")
    assert accounted("completions")
    assert accounted("embeddings")
    assert accounted("responses")
    assert not accounted("models")
    assert not accounted("responses/resp_123")


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../admin",
        "/v1/./models",
        "/v1/%2e%2e/admin",
        "/v1/%2E/models",
        "/v1/a%2fb",
        "/v1/a%2Fb",
        "/v1/a%5cb",
        "/v1/a\\b",
        "/v1//models",
        "/v1/models/",
        "//evil.example/v1/models",
        "http://evil.example/v1/models",
        "/v1/models%00",
        "/v1/mo dels",
        "/v1/models?x=1#frag",
        "/v1/models?x=\x01",
        "/v1/models?x=a b",
        "/v1/models?x=\x7f",
        "/v1/models?x=é",
        "/v1/models/%zz",
    ],
)
def test_path_tricks_are_refused(target: str) -> None:
    with pytest.raises(BadRequest):
        split_target(target)


@pytest.mark.parametrize(
    "target", ["/admin", "/v2/models", "/api/usage", "/openai/v2/x"]
)
def test_paths_outside_v1_are_not_proxied(target: str) -> None:
    with pytest.raises(NotFound):
        split_target(target)


@pytest.mark.parametrize(
    "query",
    ["include[]=a&include[]=b", "x=a|b", 'x="a"', "x={a}", "x=a^b", "x=`a`", "x=a\\b"],
)
def test_a_query_is_forwarded_as_sent_if_it_can_stand_in_a_request_line(
    query: str,
) -> None:
    """Clients send brackets and the like unescaped; the upstream judges them."""
    router = make_router()

    target = router.resolve(split_target(f"/v1/files?{query}"), None)

    assert target.url == f"https://api.openai.com/v1/files?{query}"


def test_percent_escapes_that_are_not_separators_are_kept_raw() -> None:
    router = make_router()

    path = split_target("/v1/models/ft%3Agpt-4o-mini%3Aorg")
    target = router.resolve(path, None)

    assert target.url == "https://api.openai.com/v1/models/ft%3Agpt-4o-mini%3Aorg"


@given(st.text(max_size=40))
def test_any_accepted_target_stays_under_the_base_path(text: str) -> None:
    """Whatever is accepted decodes to plain segments under the base path."""
    router = make_router()

    try:
        path = split_target("/v1/" + text)
    except (BadRequest, NotFound):
        return
    target = router.resolve(path, None)

    assert target.url.startswith("https://api.openai.com/v1/")
    decoded = unquote(
        target.url.partition("?")[0].removeprefix("https://api.openai.com/v1/")
    )
    assert all(part not in {"", ".", ".."} for part in decoded.split("/"))
    assert "\\" not in decoded
    assert decoded.count("/") == path.rest.count("/")
