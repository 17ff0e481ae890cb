"""
Who may read the usage: the admin token and CORS for ``/api`` and ``/metrics``.

With ``server.admin_token`` set, every ``/api`` route and ``/metrics`` need
``Authorization: Bearer <token>`` (or ``X-Admin-Token: <token>``); the
health checks and the dashboard's static files stay open, since the page asks
for the token and sends it with its own calls. CORS is off unless
``server.cors_origins`` names origins: then a preflight from one of them is
answered, and answers to it carry ``Access-Control-Allow-Origin``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from gateway.errors import Unauthorized
from gateway.keys import SETTINGS

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROTECTED_PREFIXES = ("/api/", "/metrics")
TOKEN_HEADER = "X-Admin-Token"
ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = f"Authorization, Content-Type, {TOKEN_HEADER}"
PREFLIGHT_MAX_AGE_S = 600


def setup(app: web.Application) -> None:
    app.middlewares.append(access_middleware)
    app.on_response_prepare.append(add_cors_headers)


def is_protected(path: str) -> bool:
    return path == "/api" or path.startswith(PROTECTED_PREFIXES)


def needs_token(request: web.Request) -> bool:
    # The route is checked besides the path in case a protected route is
    # reachable under a spelling the path test does not see.
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    return is_protected(request.path) or is_protected(canonical)


def is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def presented_token(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get(TOKEN_HEADER)


def is_token_valid(given: str | None, expected: str) -> bool:
    if given is None:
        return False
    # compare_digest takes as long whatever prefix matches.
    return hmac.compare_digest(given.encode(), expected.encode())


def allowed_origin(request: web.Request) -> str | None:
    """The request's Origin when the settings allow it on this path, else None."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or not is_api(request.path):
        return None
    origins = request.app[SETTINGS].server.cors_origins
    if origin in origins or "*" in origins:
        return origin
    return None


def preflight(origin: str) -> web.Response:
    return web.Response(
        status=204,
        headers={
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: str(PREFLIGHT_MAX_AGE_S),
            hdrs.VARY: "Origin",
        },
    )


@web.middleware
async def access_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Answer CORS preflights, and refuse protected routes without the token."""
    # A browser sends no credentials with a preflight, so it is answered
    # before the token is asked for.
    if request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in (
        request.headers
    ):
        origin = allowed_origin(request)
        if origin is not None:
            return preflight(origin)

    token = request.app[SETTINGS].server.admin_token
    if (
        token is not None
        and needs_token(request)
        and not is_token_valid(presented_token(request), token.get_secret_value())
    ):
        log.info(
            "%s %s refused: no valid admin token",
            request.method,
            request.path,
            extra={"status": 401, "code": "invalid_api_key"},
        )
        refusal = Unauthorized(
            "this route needs the admin token:"
            " send Authorization: Bearer <server.admin_token>"
        )
        return refusal.response({hdrs.WWW_AUTHENTICATE: 'Bearer realm="tallygate"'})

    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = allowed_origin(request)
    if origin is None or hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in response.headers:
        return
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    vary = response.headers.get(hdrs.VARY)
    response.headers[hdrs.VARY] = f"{vary}, Origin" if vary else "Origin"
