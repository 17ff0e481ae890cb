import { describe, expect, it } from "vitest";

import {
  costByModel,
  costByPurpose,
  fitLabel,
  hasNoCost,
  historySeries,
  OTHER_LABEL,
  PALETTE,
  sliceByCost,
  sliceColours,
  withAlpha,
} from "./charts";
import { usageFixture } from "./fixtures";

describe("cost by model", () => {
  it("lists models by cost, largest first", () => {
    const data = costByModel(usageFixture());

    expect(data.labels).toEqual(["gpt-4o", "gpt-4o-mini", "deepseek-chat"]);
    expect(data.costUsd).toEqual([0.35, 0.08, 0.02]);
    expect(data.calls).toEqual([15, 25, 5]);
  });

  it("sums the long tail into one slice", () => {
    const breakdown = Object.fromEntries(
      [5, 4, 3, 2, 1].map((cost) => [`m${cost}`, { tokens: cost * 100, cost, calls: cost }]),
    );

    const data = sliceByCost(breakdown, 3);

    expect(data.labels).toEqual(["m5", "m4", OTHER_LABEL]);
    expect(data.costUsd).toEqual([5, 4, 6]);
    expect(data.calls).toEqual([5, 4, 6]);
  });

  it("keeps every entry when they fit", () => {
    const data = sliceByCost({ a: { tokens: 1, cost: 1, calls: 1 } }, 1);

    expect(data.labels).toEqual(["a"]);
  });

  it("orders equal costs by calls, then by name", () => {
    const data = sliceByCost(
      {
        b: { tokens: 1, cost: 0, calls: 1 },
        a: { tokens: 1, cost: 0, calls: 1 },
        c: { tokens: 1, cost: 0, calls: 9 },
      },
      5,
    );

    expect(data.labels).toEqual(["c", "a", "b"]);
  });

  it("has nothing to draw when no model cost anything", () => {
    const usage = usageFixture({
      breakdown_by_model: { "local-llama": { tokens: 5000, cost: 0, calls: 3 } },
    });

    expect(hasNoCost(costByModel(usage))).toBe(true);
    expect(hasNoCost(costByModel(usageFixture()))).toBe(false);
    expect(hasNoCost(costByModel(usageFixture({ breakdown_by_model: {} })))).toBe(true);
  });
});

describe("cost by purpose", () => {
  it("keeps untagged calls as their own bar", () => {
    const data = costByPurpose(usageFixture());

    expect(data.labels).toEqual(["trading_decision", "untagged"]);
    expect(data.costUsd).toEqual([0.4, 0.05]);
  });
});

describe("history series", () => {
  it("keeps the API's order, oldest first, with readable day labels", () => {
    const series = historySeries({
      days: 3,
      data: [
        { date: "2026-12-01", tokens: 120000, cost: 0.42, calls: 45 },
        { date: "2026-12-02", tokens: 0, cost: 0, calls: 0 },
        { date: "2026-12-03", tokens: 50000, cost: 0.1, calls: 12 },
      ],
    });

    expect(series.labels).toEqual(["Dec 1", "Dec 2", "Dec 3"]);
    expect(series.costUsd).toEqual([0.42, 0, 0.1]);
    expect(series.tokens).toEqual([120000, 0, 50000]);
  });

  it("is empty for an empty history", () => {
    expect(historySeries({ days: 7, data: [] })).toEqual({ labels: [], costUsd: [], tokens: [] });
  });
});

describe("colours", () => {
  it("cycles through the palette", () => {
    const colours = sliceColours(PALETTE.length + 1);

    expect(colours).toHaveLength(PALETTE.length + 1);
    expect(colours[0]).toBe(PALETTE[0]);
    expect(colours[PALETTE.length]).toBe(PALETTE[0]);
  });

  it("adds an alpha channel to hex colours only", () => {
    expect(withAlpha("#4f7cff", 0.15)).toBe("rgba(79, 124, 255, 0.15)");
    expect(withAlpha("rgb(1, 2, 3)", 0.5)).toBe("rgb(1, 2, 3)");
  });
});

describe("fitLabel", () => {
  // Every character 7 px wide.
  const measure = (text: string): number => Array.from(text).length * 7;

  it("keeps a label that fits whole", () => {
    expect(fitLabel("trading_decision", 112, measure)).toBe("trading_decision");
  });

  it("cuts a label that does not fit to the most characters that do", () => {
    const purpose = "overnight_macro_research_digest_for_the_morning_meeting";

    const fitted = fitLabel(purpose, 120, measure);

    expect(fitted).toBe("overnigh…_meeting");
    expect(measure(fitted)).toBeLessThanOrEqual(120);
  });

  it("keeps two characters however narrow the room", () => {
    expect(fitLabel("market_summary", 0, measure)).toBe("m…");
  });
});
