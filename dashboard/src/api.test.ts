import { describe, expect, it } from "vitest";

import { ApiClient, ApiError, memoryTokenStore, UnauthorizedError, UnreachableError } from "./api";
import { usageFixture } from "./fixtures";

interface Seen {
  url: string;
  headers: Record<string, string>;
}

function fakeFetch(answer: () => Response | Promise<Response>): {
  fetch: typeof fetch;
  seen: Seen[];
} {
  const seen: Seen[] = [];
  const fetchFn = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    seen.push({ url: String(input), headers: { ...(init?.headers as Record<string, string>) } });
    return answer();
  };
  return { fetch: fetchFn as typeof fetch, seen };
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json" },
  });
}

function errorBody(message: string, code: string): unknown {
  return { error: { message, type: "invalid_request_error", code, param: null } };
}

describe("ApiClient", () => {
  it("asks for the period and returns the usage", async () => {
    const { fetch, seen } = fakeFetch(() => json(usageFixture()));
    const api = new ApiClient({ tokens: memoryTokenStore(), fetch });

    const usage = await api.usage("week");

    expect(usage.total_tokens).toBe(125000);
    expect(seen[0]?.url).toBe("/api/token-usage?period=week");
    expect(seen[0]?.headers["Authorization"]).toBeUndefined();
  });

  it("builds the history, cycles and calls URLs", async () => {
    const { fetch, seen } = fakeFetch(() => json({}));
    const api = new ApiClient({ tokens: memoryTokenStore(), fetch });

    await api.history(30);
    await api.cycles(20);
    await api.calls(50);

    expect(seen.map((item) => item.url)).toEqual([
      "/api/token-usage/history?days=30",
      "/api/token-usage/cycles?limit=20",
      "/api/token-usage/calls?limit=50",
    ]);
  });

  it("sends the stored admin token as a bearer token", async () => {
    const { fetch, seen } = fakeFetch(() => json(usageFixture()));
    const api = new ApiClient({ tokens: memoryTokenStore("s3cret"), fetch });

    await api.usage("today");

    expect(seen[0]?.headers["Authorization"]).toBe("Bearer s3cret");
  });

  it("turns 401 into UnauthorizedError with the gateway's message", async () => {
    const { fetch } = fakeFetch(() =>
      json(errorBody("admin token required", "invalid_api_key"), 401),
    );
    const api = new ApiClient({ tokens: memoryTokenStore(), fetch });

    const failure = api.usage("today");

    await expect(failure).rejects.toBeInstanceOf(UnauthorizedError);
    await expect(failure).rejects.toThrow("admin token required");
  });

  it("turns other errors into ApiError with status and code", async () => {
    const { fetch } = fakeFetch(() =>
      json(errorBody("days must be 1-365", "invalid_parameter"), 400),
    );
    const api = new ApiClient({ tokens: memoryTokenStore(), fetch });

    const error = await api.history(1000).catch((exc: unknown) => exc);

    expect(error).toBeInstanceOf(ApiError);
    expect(error).not.toBeInstanceOf(UnauthorizedError);
    expect((error as ApiError).status).toBe(400);
    expect((error as ApiError).code).toBe("invalid_parameter");
    expect((error as ApiError).message).toBe("days must be 1-365");
  });

  it("falls back to the status for an error without the JSON shape", async () => {
    const { fetch } = fakeFetch(() => new Response("oops", { status: 500 }));
    const api = new ApiClient({ tokens: memoryTokenStore(), fetch });

    await expect(api.calls(50)).rejects.toThrow("HTTP 500");
  });

  it("treats no answer as unreachable", async () => {
    const { fetch } = fakeFetch(() => Promise.reject(new TypeError("Failed to fetch")));
    const api = new ApiClient({ tokens: memoryTokenStore(), fetch });

    await expect(api.usage("today")).rejects.toBeInstanceOf(UnreachableError);
  });

  it("treats a proxy's bad gateway as unreachable", async () => {
    for (const status of [502, 503, 504]) {
      const { fetch } = fakeFetch(() => new Response("down", { status }));
      const api = new ApiClient({ tokens: memoryTokenStore(), fetch });

      await expect(api.usage("today")).rejects.toBeInstanceOf(UnreachableError);
    }
  });

  it("treats a body that is not JSON as unreachable", async () => {
    const { fetch } = fakeFetch(() => new Response("<html>", { status: 200 }));
    const api = new ApiClient({ tokens: memoryTokenStore(), fetch });

    await expect(api.usage("today")).rejects.toBeInstanceOf(UnreachableError);
  });
});
