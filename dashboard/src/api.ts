/**
 * Typed client for the gateway's usage API (`/api/token-usage...`).
 *
 * Every call goes to the page's own origin and carries the admin token, when
 * one is stored, as `Authorization: Bearer <token>`. Failures come out as one
 * of three errors, because the page reacts to each differently:
 *
 *     UnauthorizedError  401: ask for the admin token
 *     UnreachableError   no answer, or a proxy saying the gateway is down
 *     ApiError           the gateway answered with an error of its own
 */

export type Period = "today" | "session" | "week" | "month" | "all";

export type BudgetLevel = "green" | "yellow" | "red";

export interface Breakdown {
  tokens: number;
  cost: number;
  calls: number;
}

export interface Budget {
  window: string;
  limit_usd: number | null;
  spent_usd: number;
  ratio: number | null;
  level: BudgetLevel;
}

export interface Usage {
  period: Period;
  from: string | null;
  to: string | null;
  total_tokens: number;
  total_cost_usd: number;
  input_tokens: number;
  cached_input_tokens: number;
  output_tokens: number;
  reasoning_tokens: number;
  errors_count: number;
  breakdown_by_model: Record<string, Breakdown>;
  breakdown_by_purpose: Record<string, Breakdown>;
  breakdown_by_ticker: Record<string, Breakdown>;
  api_calls_count: number;
  avg_tokens_per_call: number;
  avg_response_time_ms: number;
  budget: { daily: Budget; monthly: Budget };
}

export interface HistoryDay {
  date: string;
  tokens: number;
  cost: number;
  calls: number;
}

export interface History {
  days: number;
  data: HistoryDay[];
}

export interface Cycle {
  cycle_id: string;
  calls: number;
  tokens: number;
  cost: number;
  tickers: string[];
  purposes: string[];
  first_call: string;
  last_call: string;
}

export interface Call {
  id: number;
  timestamp: string;
  model: string;
  purpose: string | null;
  ticker: string | null;
  cycle_id: string | null;
  tokens: number;
  input_tokens: number;
  output_tokens: number;
  cost: number | null;
  response_time_ms: number | null;
  status: number;
  streamed: boolean;
  upstream: string;
  endpoint: string;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export class UnauthorizedError extends ApiError {
  constructor(message: string) {
    super(message, 401, "unauthorized");
    this.name = "UnauthorizedError";
  }
}

export class UnreachableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnreachableError";
  }
}

/** Where the admin token lives between visits; `localStorage` in the page. */
export interface TokenStore {
  get(): string | null;
  set(token: string): void;
  clear(): void;
}

export const TOKEN_STORAGE_KEY = "tallygate.adminToken";

export function browserTokenStore(storage: Storage): TokenStore {
  return {
    get: () => storage.getItem(TOKEN_STORAGE_KEY),
    set: (token) => storage.setItem(TOKEN_STORAGE_KEY, token),
    clear: () => storage.removeItem(TOKEN_STORAGE_KEY),
  };
}

export function memoryTokenStore(initial: string | null = null): TokenStore {
  let token = initial;
  return {
    get: () => token,
    set: (value) => {
      token = value;
    },
    clear: () => {
      token = null;
    },
  };
}

// A load balancer or reverse proxy in front of the gateway answers these when
// the gateway itself is down; for the page that is the same as no answer.
const GATEWAY_DOWN_STATUSES = new Set([502, 503, 504]);

export interface ApiClientOptions {
  tokens: TokenStore;
  fetch?: typeof fetch;
  baseUrl?: string;
  timeoutMs?: number;
}

export class ApiClient {
  private readonly tokens: TokenStore;
  private readonly fetchFn: typeof fetch;
  private readonly baseUrl: string;
  private readonly timeoutMs: number;

  constructor(options: ApiClientOptions) {
    this.tokens = options.tokens;
    // Bound to globalThis: a bare `fetch` reference called as a method throws.
    this.fetchFn = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.baseUrl = options.baseUrl ?? "";
    this.timeoutMs = options.timeoutMs ?? 15_000;
  }

  usage(period: Period): Promise<Usage> {
    return this.get<Usage>("/api/token-usage", { period });
  }

  history(days: number): Promise<History> {
    return this.get<History>("/api/token-usage/history", { days: String(days) });
  }

  cycles(limit: number): Promise<{ cycles: Cycle[] }> {
    return this.get("/api/token-usage/cycles", { limit: String(limit) });
  }

  calls(limit: number): Promise<{ calls: Call[] }> {
    return this.get("/api/token-usage/calls", { limit: String(limit) });
  }

  async get<T>(path: string, params: Record<string, string>): Promise<T> {
    const query = new URLSearchParams(params).toString();
    const url = `${this.baseUrl}${path}${query ? `?${query}` : ""}`;
    const headers: Record<string, string> = { Accept: "application/json" };
    const token = this.tokens.get();
    if (token) {
      headers["Authorization"] = `Bearer ${token}`;
    }

    let response: Response;
    try {
      response = await this.fetchFn(url, {
        headers,
        cache: "no-store",
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (exc) {
      throw new UnreachableError(`no answer from the gateway (${describe(exc)})`);
    }

    if (response.ok) {
      try {
        return (await response.json()) as T;
      } catch (exc) {
        throw new UnreachableError(`the gateway's answer broke off (${describe(exc)})`);
      }
    }
    if (GATEWAY_DOWN_STATUSES.has(response.status)) {
      throw new UnreachableError(`the gateway is unavailable (HTTP ${response.status})`);
    }

    const { message, code } = await readError(response);
    if (response.status === 401) {
      throw new UnauthorizedError(message);
    }
    throw new ApiError(message, response.status, code);
  }
}

/** The message and code of the gateway's `{"error": {...}}` body, if it has one. */
async function readError(response: Response): Promise<{ message: string; code: string | null }> {
  const fallback = `HTTP ${response.status}`;
  try {
    const body: unknown = await response.json();
    const error = (body as { error?: { message?: unknown; code?: unknown } } | null)?.error;
    return {
      message: typeof error?.message === "string" ? error.message : fallback,
      code: typeof error?.code === "string" ? error.code : null,
    };
  } catch {
    return { message: fallback, code: null };
  }
}

function describe(exc: unknown): string {
  if (exc instanceof Error) {
    return exc.name === "TimeoutError" ? "timed out" : exc.message;
  }
  return String(exc);
}
