"""
The dashboard page: how the gateway serves its files, and the page itself in
a real headless Chromium.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from gateway import dashboard

INDEX_HTML = "<!doctype html><title>tallygate</title><p>dashboard</p>"


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A stand-in for ``npm run build`` output, plus a secret beside it."""
    root = tmp_path / "dashboard"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX_HTML)
    (root / "assets" / "index-abc123.js").write_text("console.log('hi');")
    (root / "assets" / "index-abc123.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("not for the web")
    return root


async def client_for(aiohttp_client, directory: Path):
    app = web.Application()
    dashboard.setup(app, directory)
    return await aiohttp_client(app)


async def test_root_redirects_to_the_dashboard(aiohttp_client, built) -> None:
    client = await client_for(aiohttp_client, built)

    root = await client.get("/", allow_redirects=False)
    bare = await client.get("/dashboard", allow_redirects=False)

    assert root.status == 302
    assert root.headers["Location"] == "/dashboard/"
    assert bare.status == 302
    assert bare.headers["Location"] == "/dashboard/"


async def test_dashboard_serves_index_html_uncached(aiohttp_client, built) -> None:
    client = await client_for(aiohttp_client, built)

    resp = await client.get("/dashboard/")

    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert await resp.text() == INDEX_HTML
    assert resp.headers["Cache-Control"] == "no-cache"


async def test_following_the_root_redirect_lands_on_the_page(
    aiohttp_client, built
) -> None:
    client = await client_for(aiohttp_client, built)

    resp = await client.get("/")

    assert resp.status == 200
    assert resp.url.path == "/dashboard/"
    assert await resp.text() == INDEX_HTML


async def test_assets_are_cached_for_long(aiohttp_client, built) -> None:
    client = await client_for(aiohttp_client, built)

    script = await client.get("/dashboard/assets/index-abc123.js")
    style = await client.get("/dashboard/assets/index-abc123.css")

    assert script.status == 200
    assert "javascript" in script.content_type
    assert await script.text() == "console.log('hi');"
    assert "immutable" in script.headers["Cache-Control"]
    assert "max-age=31536000" in style.headers["Cache-Control"]


async def test_index_by_name_is_not_cached_for_long(aiohttp_client, built) -> None:
    client = await client_for(aiohttp_client, built)

    resp = await client.get("/dashboard/index.html")

    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-cache"


async def test_unknown_file_is_404(aiohttp_client, built) -> None:
    client = await client_for(aiohttp_client, built)

    resp = await client.get("/dashboard/assets/nope.js")
    folder = await client.get("/dashboard/assets")

    assert resp.status == 404
    assert folder.status == 404


async def test_missing_build_answers_503_with_the_build_command(
    aiohttp_client, tmp_path
) -> None:
    client = await client_for(aiohttp_client, tmp_path / "not-built")

    page = await client.get("/dashboard/")
    asset = await client.get("/dashboard/assets/index-abc123.js")

    assert page.status == 503
    assert page.content_type == "text/html"
    assert "npm ci &amp;&amp; npm run build" in await page.text()
    assert asset.status == 503


def test_default_directory_is_next_to_the_module() -> None:
    app = web.Application()

    dashboard.setup(app)

    expected = Path(dashboard.__file__).parent / "static" / "dashboard"
    assert app[dashboard.DASHBOARD_DIR] == expected


async def test_directory_set_on_the_app_is_used(aiohttp_client, built) -> None:
    app = web.Application()
    app[dashboard.DASHBOARD_DIR] = built
    dashboard.setup(app)
    client = await aiohttp_client(app)

    resp = await client.get("/dashboard/")

    assert resp.status == 200
    assert await resp.text() == INDEX_HTML


TRAVERSALS = [
    "/dashboard/../secret.txt",
    "/dashboard/../../gateway/config.py",
    "/dashboard/%2e%2e/secret.txt",
    "/dashboard/%2E%2E/secret.txt",
    "/dashboard/..%2fsecret.txt",
    "/dashboard/..%2Fsecret.txt",
    "/dashboard/%2e%2e%2fsecret.txt",
    "/dashboard/assets/..%2f..%2fsecret.txt",
    "/dashboard/assets/%2e%2e/%2e%2e/secret.txt",
    "/dashboard/..%5csecret.txt",
    "/dashboard/%5c..%5csecret.txt",
    "/dashboard/%2fetc%2fpasswd",
    "/dashboard//etc/passwd",
    "/dashboard/.%2e/secret.txt",
    "/dashboard/%252e%252e/secret.txt",
    "/dashboard/index.html%00.js",
    "/dashboard/./index.html/../../secret.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_traversal_never_leaves_the_directory(
    aiohttp_client, built, path
) -> None:
    client = await client_for(aiohttp_client, built)

    resp = await client.get(URL(path, encoded=True), allow_redirects=False)
    body = await resp.read()

    assert resp.status in {400, 404}, (path, resp.status)
    assert b"not for the web" not in body


def test_resolve_inside_refuses_a_symlink_that_points_away(built) -> None:
    (built / "escape.txt").symlink_to(built.parent / "secret.txt")

    assert dashboard.resolve_inside(built, "escape.txt") is None
    assert dashboard.resolve_inside(built, "assets/index-abc123.js") is not None
