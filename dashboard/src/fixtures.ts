/** API answers in the gateway's shapes, shared by the unit tests. */

import type { Usage } from "./api";

export function usageFixture(overrides: Partial<Usage> = {}): Usage {
  return {
    period: "today",
    from: "2026-12-03T00:00:00+00:00",
    to: "2026-12-03T12:00:00+00:00",
    total_tokens: 125000,
    total_cost_usd: 0.45,
    input_tokens: 90000,
    cached_input_tokens: 10000,
    output_tokens: 35000,
    reasoning_tokens: 0,
    errors_count: 1,
    breakdown_by_model: {
      "gpt-4o": { tokens: 50000, cost: 0.35, calls: 15 },
      "gpt-4o-mini": { tokens: 60000, cost: 0.08, calls: 25 },
      "deepseek-chat": { tokens: 15000, cost: 0.02, calls: 5 },
    },
    breakdown_by_purpose: {
      trading_decision: { tokens: 100000, cost: 0.4, calls: 35 },
      untagged: { tokens: 25000, cost: 0.05, calls: 10 },
    },
    breakdown_by_ticker: { AAPL: { tokens: 80000, cost: 0.3, calls: 20 } },
    api_calls_count: 45,
    avg_tokens_per_call: 2778,
    avg_response_time_ms: 850,
    budget: {
      daily: { window: "day", limit_usd: 5, spent_usd: 0.45, ratio: 0.09, level: "green" },
      monthly: { window: "month", limit_usd: null, spent_usd: 3.2, ratio: null, level: "green" },
    },
    ...overrides,
  };
}
