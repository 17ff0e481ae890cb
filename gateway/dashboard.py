"""
The dashboard page: the built files of ``dashboard/`` served under ``/dashboard/``.

``npm run build`` in ``dashboard/`` writes them to ``gateway/static/dashboard``,
next to this module, which is where a checkout, the wheel and the Docker image
all carry them. Another directory can be given to :func:`setup` or set on the
application under :data:`DASHBOARD_DIR` before ``setup`` runs.

``index.html`` is sent with ``no-cache`` so a new build shows on the next
load; everything under ``assets/`` has a content hash in its name and is
cached for a year. When the files are missing the page answers 503 with the
command that builds them.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)

DASHBOARD_DIR = web.AppKey("dashboard_dir", Path)
"""Where the built dashboard lives; set by :func:`setup`."""

DEFAULT_DIR = Path(__file__).parent / "static" / "dashboard"

INDEX = "index.html"
BUILD_COMMAND = "cd dashboard && npm ci && npm run build"

NO_CACHE = "no-cache"
# Vite puts a content hash in every asset name, so a name never changes meaning.
LONG_CACHE = "public, max-age=31536000, immutable"


def setup(app: web.Application, directory: Path | str | None = None) -> None:
    """
    Register ``/``, ``/dashboard`` and ``/dashboard/...`` on *app*.

    The files are looked up in *directory* if given, else in the directory
    already stored under :data:`DASHBOARD_DIR`, else next to this module.
    They are looked for on each request, so a build made while the gateway
    runs is picked up without a restart.
    """
    if directory is not None:
        app[DASHBOARD_DIR] = Path(directory)
    elif DASHBOARD_DIR not in app:
        app[DASHBOARD_DIR] = DEFAULT_DIR

    app.router.add_get("/", redirect_to_dashboard)
    app.router.add_get("/dashboard", redirect_to_dashboard)
    app.router.add_get("/dashboard/", serve_index)
    app.router.add_get("/dashboard/{path:.+}", serve_file)


async def redirect_to_dashboard(request: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard/")


async def serve_index(request: web.Request) -> web.StreamResponse:
    root = request.app[DASHBOARD_DIR]
    index = root / INDEX
    if not index.is_file():
        return _not_built(root)

    return web.FileResponse(index, headers={"Cache-Control": NO_CACHE})


async def serve_file(request: web.Request) -> web.StreamResponse:
    root = request.app[DASHBOARD_DIR]
    if not (root / INDEX).is_file():
        return _not_built(root)

    path = resolve_inside(root, request.match_info["path"])
    if path is None:
        raise web.HTTPNotFound()

    is_asset = path.parent.name == "assets" and path.name != INDEX
    cache = LONG_CACHE if is_asset else NO_CACHE
    return web.FileResponse(path, headers={"Cache-Control": cache})


def resolve_inside(root: Path, relative: str) -> Path | None:
    """
    Return the regular file *relative* names inside *root*, or None.

    *relative* is the already-decoded rest of the URL path. Anything that
    could step outside *root* (``..``, an absolute path, a backslash, a NUL,
    a symlink pointing away) yields None rather than a file.
    """
    if "\\" in relative or "\x00" in relative or relative.startswith("/"):
        return None
    parts = relative.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        return None

    base = root.resolve()
    candidate = base.joinpath(*parts).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None

    return candidate


def _not_built(root: Path) -> web.Response:
    log.warning("dashboard files are missing from %s", root)
    page = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>tallygate: dashboard not built</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto;
padding: 0 1rem; line-height: 1.5">
<h1>The dashboard has not been built</h1>
<p>The gateway looked for its files in <code>{html.escape(str(root))}</code>
and found none. Build them from a checkout with:</p>
<pre style="background: #8881; padding: 0.75rem 1rem; border-radius: 6px">
{html.escape(BUILD_COMMAND)}</pre>
<p>The usage API under <code>/api/</code> works without them.</p>
</body>
</html>
"""
    return web.Response(
        status=503,
        text=page,
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )
