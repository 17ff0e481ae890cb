"""
Errors the gateway raises and the one JSON shape they become.

    GatewayError                500 internal_error
    ├── ConfigError             (startup only: one line, then exit)
    ├── BadRequest              400 invalid_request_error
    │   ├── BadTagHeader        400 invalid_tag_header
    │   ├── BadParameter        400 invalid_parameter
    │   └── BodyTooLarge        413 request_too_large
    ├── Unauthorized            401 invalid_api_key
    ├── NotFound                404 not_found
    ├── BudgetExceeded          429 budget_exceeded
    └── UpstreamError           502 upstream_error
        └── UpstreamTimeout     504 upstream_timeout

Every error leaves the gateway as OpenAI does it:
``{"error": {"message": ..., "type": ..., "code": ..., "param": ...}}``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger(__name__)


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        # The X-Request-Id of a proxied call refused before it went upstream.
        self.request_id: str | None = None

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return json_error(self.status, self.body(), headers)


class ConfigError(GatewayError, ValueError):
    code = "invalid_configuration"


class BadRequest(GatewayError, ValueError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class BadTagHeader(BadRequest):
    code = "invalid_tag_header"


class BadParameter(BadRequest):
    code = "invalid_parameter"


class BodyTooLarge(BadRequest):
    status, code = 413, "request_too_large"


class Unauthorized(GatewayError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class BudgetExceeded(GatewayError):
    status, type, code = 429, "budget_exceeded", "budget_exceeded"


class UpstreamError(GatewayError):
    status, type, code = 502, "upstream_error", "upstream_error"


class UpstreamTimeout(UpstreamError, TimeoutError):
    status, code = 504, "upstream_timeout"


def error_body(
    message: str, type_: str, code: str, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def json_error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def refused(method: str, path: str, exc: GatewayError) -> web.Response:
    """Log a refused request once and return its answer."""
    request_id = exc.request_id
    named = "" if request_id is None else f" (request {request_id})"
    log.info(
        "%s %s refused: %s%s", method, path, exc.message, named,
        extra={"status": exc.status, "code": exc.code},
    )  # fmt: skip
    if request_id is None:
        return exc.response()
    # The header's name as tags.REQUEST_ID_HEADER spells it (tags imports us).
    return exc.response({"X-Request-Id": request_id})


def internal_error(method: str, path: str) -> web.Response:
    """Log the exception being handled (a bug) and return the 500 answer."""
    log.exception("unhandled error on %s %s", method, path)
    return json_error(
        500, error_body("internal gateway error", "server_error", "internal_error")
    )
