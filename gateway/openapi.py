"""
The OpenAPI 3.1 document of every ``/api`` route, served at ``/api/openapi.json``.

Kept true by a test that validates real answers against these schemas, so a
change to an answer's shape must change this document too.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from gateway import __version__
from gateway.ingest import NO_CONTROL_CHARS
from gateway.usage import MAX_TOKENS

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(
    properties: dict[str, Schema], *, required: tuple[str, ...] | None = None
) -> Schema:
    """A closed object whose *required* properties (all, unless named) must be set."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
        "additionalProperties": False,
    }


def nullable(schema: Schema) -> Schema:
    kind = schema["type"]
    return {**schema, "type": [*([kind] if isinstance(kind, str) else kind), "null"]}


def text_of(max_chars: int) -> Schema:
    """Text the API takes: 1 to *max_chars* characters, no control characters."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_chars,
        "pattern": NO_CONTROL_CHARS,
    }


INTEGER: Schema = {"type": "integer", "minimum": 0}
USD: Schema = {"type": "number", "minimum": 0, "description": "US dollars."}
TEXT: Schema = {"type": "string"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
DATE_OR_TIMESTAMP: Schema = {
    "type": "string",
    # Empty is the same as absent.
    "anyOf": [{"format": "date"}, {"format": "date-time"}, {"maxLength": 0}],
}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {
                    "message": TEXT,
                    "type": TEXT,
                    "code": TEXT,
                    "param": nullable(TEXT),
                }
            )
        }
    ),
    "Breakdown": obj({"tokens": INTEGER, "cost": USD, "calls": INTEGER}),
    "Budget": obj(
        {
            "window": {"type": "string", "enum": ["day", "month"]},
            "limit_usd": nullable(USD),
            "spent_usd": USD,
            "ratio": nullable({"type": "number", "minimum": 0}),
            "level": {"type": "string", "enum": ["green", "yellow", "red"]},
        }
    ),
    "TokenUsage": obj(
        {
            "period": {
                "type": "string",
                "enum": ["today", "session", "week", "month", "all"],
            },
            "from": nullable(
                {**TIMESTAMP, "description": "Start of the period; null for all."}
            ),
            "to": {**TIMESTAMP, "description": "When the figures were read."},
            "total_tokens": INTEGER,
            "total_cost_usd": USD,
            "input_tokens": INTEGER,
            "cached_input_tokens": INTEGER,
            "output_tokens": INTEGER,
            "reasoning_tokens": INTEGER,
            "errors_count": INTEGER,
            "breakdown_by_model": {
                "type": "object",
                "additionalProperties": ref("Breakdown"),
            },
            "breakdown_by_purpose": {
                "type": "object",
                "additionalProperties": ref("Breakdown"),
                "description": 'Calls without a purpose are under "untagged".',
            },
            "breakdown_by_ticker": {
                "type": "object",
                "additionalProperties": ref("Breakdown"),
                "description": "Only calls with a ticker.",
            },
            "api_calls_count": INTEGER,
            "avg_tokens_per_call": INTEGER,
            "avg_response_time_ms": INTEGER,
            "budget": obj({"daily": ref("Budget"), "monthly": ref("Budget")}),
        }
    ),
    "History": obj(
        {
            "days": {"type": "integer", "minimum": 1, "maximum": 366},
            "data": {
                "type": "array",
                "items": obj(
                    {
                        "date": {"type": "string", "format": "date"},
                        "tokens": INTEGER,
                        "cost": USD,
                        "calls": INTEGER,
                    }
                ),
            },
        }
    ),
    "Cycle": obj(
        {
            "cycle_id": TEXT,
            "calls": INTEGER,
            "tokens": INTEGER,
            "cost": USD,
            "tickers": {"type": "array", "items": TEXT},
            "purposes": {"type": "array", "items": TEXT},
            "first_call": TIMESTAMP,
            "last_call": TIMESTAMP,
        }
    ),
    "Call": obj(
        {
            "id": INTEGER,
            "timestamp": TIMESTAMP,
            "request_id": TEXT,
            "model": TEXT,
            "purpose": nullable(TEXT),
            "ticker": nullable(TEXT),
            "cycle_id": nullable(TEXT),
            "tokens": INTEGER,
            "input_tokens": INTEGER,
            "cached_input_tokens": INTEGER,
            "output_tokens": INTEGER,
            "reasoning_tokens": INTEGER,
            "cost": nullable({**USD, "description": "null when unpriced."}),
            "fee_cost": nullable(
                {
                    **USD,
                    "description": "Part of cost charged per call (tool calls,"
                    " request fees); null when unpriced or stored before fees"
                    " were priced.",
                }
            ),
            "web_search_calls": INTEGER,
            "file_search_calls": INTEGER,
            "service_tier": nullable(
                {
                    **TEXT,
                    "description": "The tier that served it, as the upstream"
                    " named it (default, flex, priority); null: not named.",
                }
            ),
            "response_time_ms": nullable(
                {
                    "type": "number",
                    "minimum": 0,
                    "description": "null: not measured (ingested without it).",
                }
            ),
            "status": {"type": "integer"},
            "streamed": {"type": "boolean"},
            "upstream": TEXT,
            "endpoint": TEXT,
            "error": nullable(TEXT),
        }
    ),
    # Every optional field may also be null, which means the same as absent.
    "UsagePost": obj(
        {
            "model": text_of(256),
            "input_tokens": {**INTEGER, "maximum": MAX_TOKENS},
            "output_tokens": {**INTEGER, "maximum": MAX_TOKENS},
            "cached_input_tokens": nullable(
                {
                    **INTEGER,
                    "maximum": MAX_TOKENS,
                    "description": "Part of input_tokens, so at most that.",
                }
            ),
            "reasoning_tokens": nullable(
                {
                    **INTEGER,
                    "maximum": MAX_TOKENS,
                    "description": "Part of output_tokens, so at most that.",
                }
            ),
            "purpose": nullable(text_of(128)),
            "ticker": nullable(text_of(128)),
            "cycle_id": nullable(text_of(128)),
            "response_time_ms": nullable(
                {"type": "number", "minimum": 0, "maximum": 86400000}
            ),
            "timestamp": nullable(
                {
                    **TIMESTAMP,
                    "description": "When the call was made (not ahead of now);"
                    " UTC without an offset. Absent: now.",
                }
            ),
            "request_id": nullable(
                {
                    "type": "string",
                    "pattern": "^[\\x21-\\x7e]{1,128}$",
                    "description": "Posting the same id again stores nothing new.",
                }
            ),
            "upstream": nullable(text_of(64)),
            "provider": nullable(
                {
                    **text_of(64),
                    "description": "Price catalog provider id (openai, deepseek).",
                }
            ),
            "service_tier": nullable(
                {
                    "type": "string",
                    "pattern": "^[a-z0-9_-]{1,32}$",
                    "description": "The tier that served the call (flex, priority):"
                    " priced at that tier's rates.",
                }
            ),
            "web_search_calls": nullable(
                {
                    **INTEGER,
                    "maximum": MAX_TOKENS,
                    "description": "Web search tool calls, priced per call.",
                }
            ),
            "file_search_calls": nullable(
                {
                    **INTEGER,
                    "maximum": MAX_TOKENS,
                    "description": "File search tool calls, priced per call.",
                }
            ),
        },
        required=("model", "input_tokens", "output_tokens"),
    ),
    "Ingested": obj(
        {
            "id": nullable(
                {**INTEGER, "description": "null if not written yet (spooled)."}
            ),
            "request_id": TEXT,
            "cost_usd": nullable(USD),
            "input_cost_usd": nullable(USD),
            "output_cost_usd": nullable(USD),
            "fee_cost_usd": nullable(USD),
            "price_source": nullable(TEXT),
            "duplicate": {"type": "boolean"},
        }
    ),
}

FILTERS = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "string", "maxLength": 256, "pattern": NO_CONTROL_CHARS},
        "description": text,
    }
    for name, text in (
        ("purpose", 'Only calls with this purpose ("untagged": without one).'),
        ("model", "Only calls of this model."),
        ("ticker", "Only calls with this ticker."),
        ("cycle_id", "Only calls of this cycle."),
    )
]


def query(name: str, schema: Schema, text: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": text,
    }


def error_answer(text: str) -> dict[str, Any]:
    return {
        "description": text,
        "content": {"application/json": {"schema": ref("Error")}},
    }


ERRORS = {
    "400": error_answer("A parameter is bad; error.param names it."),
    "401": error_answer("The admin token is set and was not sent."),
}
# What the routes that read the database may also answer.
READ_ERRORS = {
    **ERRORS,
    "503": error_answer("The usage database cannot be reached right now."),
}


def read_json(name: str, text: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": ref(name)}}, "description": text}


PATHS: dict[str, Any] = {
    "/api/token-usage": {
        "get": {
            "operationId": "getTokenUsage",
            "summary": "Totals, breakdowns and budgets of one period (UTC).",
            "parameters": [
                query(
                    "period",
                    {
                        "type": "string",
                        "enum": ["today", "session", "week", "month", "all"],
                        "default": "today",
                    },
                    "today since 00:00, week the last 7 days, month since the 1st,"
                    " session since this process started.",
                ),
                *FILTERS,
            ],
            "responses": {"200": read_json("TokenUsage", "The usage."), **READ_ERRORS},
        }
    },
    "/api/token-usage/history": {
        "get": {
            "operationId": "getTokenUsageHistory",
            "summary": "One entry per UTC day, oldest first, ending today.",
            "parameters": [
                query(
                    "days",
                    {"type": "integer", "minimum": 1, "maximum": 366, "default": 30},
                    "How many days.",
                ),
                *FILTERS,
            ],
            "responses": {"200": read_json("History", "Gaps as zeros."), **READ_ERRORS},
        }
    },
    "/api/token-usage/cycles": {
        "get": {
            "operationId": "getTokenUsageCycles",
            "summary": "The latest cycles, latest first.",
            "parameters": [
                query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 500, "default": 20},
                    "How many cycles.",
                ),
                *FILTERS,
            ],
            "responses": {"200": read_json("CycleList", "The cycles."), **READ_ERRORS},
        }
    },
    "/api/token-usage/calls": {
        "get": {
            "operationId": "getTokenUsageCalls",
            "summary": "The latest calls, newest first.",
            "parameters": [
                query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                    "How many calls.",
                ),
                *FILTERS,
            ],
            "responses": {"200": read_json("CallList", "The calls."), **READ_ERRORS},
        }
    },
    "/api/token-usage/export.csv": {
        "get": {
            "operationId": "exportTokenUsage",
            "summary": "The stored rows of a time range as CSV, oldest first.",
            "parameters": [
                query(
                    "from",
                    DATE_OR_TIMESTAMP,
                    "ISO timestamp or date (its midnight); no start if absent.",
                ),
                query(
                    "to",
                    DATE_OR_TIMESTAMP,
                    "ISO timestamp (excluded) or date (included); no end if absent.",
                ),
                *FILTERS,
            ],
            "responses": {
                **READ_ERRORS,
                "200": {
                    "description": "A header line, then one line per row.",
                    "content": {"text/csv": {"schema": {"type": "string"}}},
                },
            },
        }
    },
    "/api/usage": {
        "post": {
            "operationId": "postUsage",
            "summary": "Record a call made without the proxy, priced like one.",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("UsagePost")}},
            },
            "responses": {
                "201": read_json("Ingested", "Recorded."),
                **ERRORS,
                "200": read_json(
                    "Ingested", "The request_id was posted before; nothing new."
                ),
            },
        }
    },
    "/api/budget": {
        "get": {
            "operationId": "getBudget",
            "summary": "Every configured budget: limit, spent, ratio and level.",
            "responses": {
                "200": read_json("BudgetList", "One entry per configured limit."),
                "401": ERRORS["401"],
            },
        }
    },
    "/api/openapi.json": {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document.",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "401": ERRORS["401"],
            },
        }
    },
}

SCHEMAS["BudgetStatus"] = obj(
    {
        "name": {"type": "string", "description": "daily, monthly, daily:<purpose>"},
        "scope": {"type": "string", "description": "global or purpose:<name>"},
        "window": {"type": "string", "enum": ["day", "month"]},
        "limit_usd": USD,
        "spent_usd": USD,
        "ratio": {"type": "number", "minimum": 0},
        "level": {"type": "string", "enum": ["green", "yellow", "red"]},
        "enforce": {"type": "boolean"},
        "window_start": TIMESTAMP,
        "window_end": TIMESTAMP,
    }
)
SCHEMAS["BudgetList"] = obj(
    {"budgets": {"type": "array", "items": ref("BudgetStatus")}}
)
SCHEMAS["CycleList"] = obj({"cycles": {"type": "array", "items": ref("Cycle")}})
SCHEMAS["CallList"] = obj({"calls": {"type": "array", "items": ref("Call")}})


@cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once; callers must not change it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tallygate usage API",
            "version": __version__,
            "description": "Token usage and cost recorded by the gateway.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Needed when server.admin_token is set.",
                }
            },
        },
        # Either the token or, when none is configured, nothing.
        "security": [{"adminToken": []}, {}],
    }
