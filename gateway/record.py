"""
The usage record: one row of ``llm_usage``, built once per call.

The proxy, the ingestion API and the recorder all speak this type; the spool
stores it as one JSON line (``to_json`` / ``from_json``) with money as strings,
so a replayed record is the record that was built, to the last digit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

# Calls without a purpose are counted under this name, by the statistics, the
# metrics and the budgets; a call tagged with the name itself is counted the same.
UNTAGGED = "untagged"


# The record's fields that hold USD, exact decimals (strings in JSON).
MONEY_FIELDS = ("input_cost_usd", "output_cost_usd", "total_cost_usd", "fee_cost_usd")


def new_request_id() -> str:
    # 128 random bits, as a uuid4 has, without building a UUID object per call.
    return f"tg-{os.urandom(16).hex()}"


# Not slots=True: orjson encodes a plain dataclass from its __dict__, about
# three times faster than one with slots (130 records: 86 vs 277 us here), and
# the recorder encodes every record once per write.
@dataclass
class UsageRecord:
    request_id: str
    timestamp: datetime
    model: str
    upstream: str = ""
    endpoint: str = ""
    status: int = 200
    streamed: bool = False
    input_tokens: int = 0
    # Included in input_tokens; priced at the cached rate.
    cached_input_tokens: int = 0
    output_tokens: int = 0
    # Included in output_tokens; never added twice.
    reasoning_tokens: int = 0
    total_tokens: int = 0
    input_cost_usd: Decimal | None = None
    output_cost_usd: Decimal | None = None
    total_cost_usd: Decimal | None = None
    # Part of total_cost_usd charged per call (tool calls, request fees).
    fee_cost_usd: Decimal | None = None
    # Built-in tool calls the upstream ran for the call, each billed.
    web_search_calls: int = 0
    file_search_calls: int = 0
    # Which price source priced it ("config", "genai-prices"); None: unpriced.
    price_source: str | None = None
    # The service tier the upstream says served the call; None: not named.
    service_tier: str | None = None
    # False when the response ended before its usage arrived.
    usage_complete: bool = True
    # True when the tokens were estimated from what was seen, not reported.
    usage_estimated: bool = False
    purpose: str | None = None
    ticker: str | None = None
    cycle_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # None: not measured (a call ingested without it); counted in no average.
    response_time_ms: float | None = 0.0
    # The label of the gateway key the client presented, if any.
    key_label: str | None = None
    # A short machine code when the call did not end normally
    # ("upstream_timeout", "client_disconnected", ...).
    error: str | None = None

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None:
            raise ValueError("UsageRecord.timestamp must be timezone-aware")

    def to_json(self) -> bytes:
        return orjson.dumps(self, default=encode_json)

    @classmethod
    def from_json(cls, line: bytes | str) -> UsageRecord:
        data: dict[str, Any] = orjson.loads(line)
        data["timestamp"] = datetime.fromisoformat(data["timestamp"]).astimezone(UTC)
        for name in MONEY_FIELDS:
            if data.get(name) is not None:
                data[name] = Decimal(data[name])
        return cls(**data)


def encode_json(value: Any) -> Any:
    """orjson's fallback: money as exact decimal strings."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")
