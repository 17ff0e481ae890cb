import { describe, expect, it } from "vitest";

import {
  formatAgo,
  formatClock,
  formatDay,
  formatInteger,
  formatMs,
  formatPercent,
  formatSince,
  formatTimestamp,
  formatTokens,
  formatTokensShort,
  formatUsd,
  formatUsdFine,
  MISSING,
  shortenLabel,
} from "./format";

describe("formatInteger", () => {
  it("groups thousands", () => {
    expect(formatInteger(0)).toBe("0");
    expect(formatInteger(2778)).toBe("2,778");
    expect(formatInteger(1234567)).toBe("1,234,567");
  });

  it("rounds fractions", () => {
    expect(formatInteger(2777.6)).toBe("2,778");
  });

  it("shows a dash for missing values", () => {
    expect(formatInteger(null)).toBe(MISSING);
    expect(formatInteger(undefined)).toBe(MISSING);
    expect(formatInteger(Number.NaN)).toBe(MISSING);
  });
});

describe("formatTokens", () => {
  it("is exact below a million", () => {
    expect(formatTokens(125000)).toBe("125,000");
    expect(formatTokens(999999)).toBe("999,999");
  });

  it("abbreviates millions and billions", () => {
    expect(formatTokens(1_250_000)).toBe("1.3M");
    expect(formatTokens(12_000_000)).toBe("12.0M");
    expect(formatTokens(3_400_000_000)).toBe("3.4B");
  });
});

describe("formatTokensShort", () => {
  it("uses k for thousands", () => {
    expect(formatTokensShort(950)).toBe("950");
    expect(formatTokensShort(1500)).toBe("1.5k");
    expect(formatTokensShort(12000)).toBe("12k");
    expect(formatTokensShort(125000)).toBe("125k");
    expect(formatTokensShort(2_500_000)).toBe("2.5M");
  });
});

describe("formatUsd", () => {
  it("shows cents for ordinary amounts", () => {
    expect(formatUsd(0.45)).toBe("$0.45");
    expect(formatUsd(5)).toBe("$5.00");
    expect(formatUsd(3.2)).toBe("$3.20");
    expect(formatUsd(999.994)).toBe("$999.99");
  });

  it("drops cents from large amounts", () => {
    expect(formatUsd(1234.56)).toBe("$1,235");
  });

  it("keeps two significant digits below a cent", () => {
    expect(formatUsd(0.001)).toBe("$0.001");
    expect(formatUsd(0.0042)).toBe("$0.0042");
    expect(formatUsd(0.00042)).toBe("$0.00042");
    expect(formatUsd(0.000012345)).toBe("$0.000012");
  });

  it("writes zero plainly", () => {
    expect(formatUsd(0)).toBe("$0.00");
  });

  it("puts the sign before the dollar", () => {
    expect(formatUsd(-1.5)).toBe("-$1.50");
  });

  it("shows a dash for an unknown cost", () => {
    expect(formatUsd(null)).toBe(MISSING);
  });
});

describe("formatUsdFine", () => {
  it("lines a column of small costs up on four decimals", () => {
    expect(formatUsdFine(0.0031)).toBe("$0.0031");
    expect(formatUsdFine(0.01)).toBe("$0.0100");
    expect(formatUsdFine(0.00084)).toBe("$0.0008");
    expect(formatUsdFine(0)).toBe("$0.0000");
  });

  it("does not round a real cost down to zero", () => {
    expect(formatUsdFine(0.00001)).toBe("<$0.0001");
  });

  it("uses cents from a dollar up", () => {
    expect(formatUsdFine(1.5)).toBe("$1.50");
  });

  it("shows a dash for an unknown cost", () => {
    expect(formatUsdFine(null)).toBe(MISSING);
  });
});

describe("formatMs", () => {
  it("uses milliseconds below a second", () => {
    expect(formatMs(850)).toBe("850 ms");
    expect(formatMs(812.5)).toBe("813 ms");
  });

  it("uses seconds from a second up", () => {
    expect(formatMs(1000)).toBe("1.0 s");
    expect(formatMs(12_345)).toBe("12.3 s");
  });
});

describe("formatPercent", () => {
  it("rounds to whole percent", () => {
    expect(formatPercent(0.09)).toBe("9%");
    expect(formatPercent(0.5)).toBe("50%");
    expect(formatPercent(1.25)).toBe("125%");
  });

  it("does not round a small spend down to nothing", () => {
    expect(formatPercent(0.004)).toBe("<1%");
    expect(formatPercent(0)).toBe("0%");
  });

  it("shows a dash without a ratio", () => {
    expect(formatPercent(null)).toBe(MISSING);
  });
});

describe("times", () => {
  it("formats a clock time in 24-hour form", () => {
    expect(formatClock("2026-12-03T09:05:07Z", "UTC")).toBe("09:05:07");
    expect(formatClock("2026-12-03T21:05:07+00:00", "UTC")).toBe("21:05:07");
  });

  it("shows a dash for a missing or broken time", () => {
    expect(formatClock(null)).toBe(MISSING);
    expect(formatClock("not a time")).toBe(MISSING);
  });

  it("gives today's timestamps as a clock and older ones with their day", () => {
    const now = new Date("2026-12-03T12:00:00Z");

    expect(formatTimestamp("2026-12-03T08:30:00Z", now, "UTC")).toBe("08:30:00");
    expect(formatTimestamp("2026-12-02T23:15:00Z", now, "UTC")).toBe("Dec 2, 23:15");
  });

  it("gives the start of a period as a clock today and as a day before", () => {
    const now = new Date("2026-12-03T12:00:00Z");

    expect(formatSince("2026-12-03T06:00:00+00:00", now, "UTC")).toBe("06:00");
    expect(formatSince("2026-11-27T00:00:00+00:00", now, "UTC")).toBe("Nov 27");
    expect(formatSince("2025-06-01T00:00:00+00:00", now, "UTC")).toBe("Jun 1, 2025");
    expect(formatSince(null, now)).toBe(MISSING);
  });

  it("formats a history day without moving it across time zones", () => {
    expect(formatDay("2026-12-03")).toBe("Dec 3");
    expect(formatDay("2025-01-01")).toBe("Jan 1");
    expect(formatDay("garbage")).toBe("garbage");
  });

  it("says how long ago a refresh was", () => {
    const now = new Date("2026-12-03T12:00:00Z");
    const ago = (seconds: number): string =>
      formatAgo(new Date(now.getTime() - seconds * 1000), now);

    expect(ago(2)).toBe("just now");
    expect(ago(45)).toBe("45 s ago");
    expect(ago(180)).toBe("3 min ago");
    expect(ago(7200)).toBe("2 h ago");
    expect(ago(3 * 86400)).toBe("3 days ago");
  });
});

describe("shortenLabel", () => {
  it("leaves a name that fits as it is", () => {
    expect(shortenLabel("gpt-4o-mini", 11)).toBe("gpt-4o-mini");
    expect(shortenLabel("", 5)).toBe("");
  });

  it("cuts a long name in the middle to the length asked", () => {
    const model = "accounts/fireworks/models/llama-v3p1-405b-instruct-long-context";

    const short = shortenLabel(model, 24);

    expect(short).toBe("accounts/fir…ong-context");
    expect(Array.from(short)).toHaveLength(24);
  });

  it("counts characters, not UTF-16 units", () => {
    expect(shortenLabel("🙂🙂🙂🙂🙂🙂", 5)).toBe("🙂🙂…🙂🙂");
  });

  it("keeps at least the first character", () => {
    expect(shortenLabel("trading_decision", 1)).toBe("t…");
  });
});
