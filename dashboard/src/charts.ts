/**
 * The three charts of the page, and the pure functions that turn the API's
 * JSON into what they draw.
 *
 * Colours come from the page's CSS custom properties, so the charts follow
 * the light or dark scheme the stylesheet picks; `applyTheme` re-reads them.
 */

import {
  ArcElement,
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  DoughnutController,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
  type ChartConfiguration,
  type FontSpec,
  type Plugin,
  type TooltipItem,
} from "chart.js";
import { toFont } from "chart.js/helpers";

import type { Breakdown, History, Usage } from "./api";
import {
  formatDay,
  formatPercent,
  formatTokens,
  formatTokensShort,
  formatUsd,
  shortenLabel,
} from "./format";

Chart.register(
  ArcElement,
  BarController,
  BarElement,
  CategoryScale,
  DoughnutController,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
);

/** Labelled amounts for the doughnut and the bar chart, largest first. */
export interface SliceData {
  labels: string[];
  costUsd: number[];
  calls: number[];
}

export interface HistorySeries {
  labels: string[];
  costUsd: number[];
  tokens: number[];
}

export const OTHER_LABEL = "other";

// Longest model name the doughnut's legend shows whole (a longer legend line
// is cut at both card edges); longer ones are cut in the middle, and the
// tooltip has them whole.
export const LEGEND_LABEL_CHARS = 28;
// Chart.js gives a vertical axis at most half the chart's width and cuts a
// longer label at the canvas edge; the tick mark and padding take this much.
const AXIS_SLACK_PX = 16;

/** The font a scale's ticks are drawn in, the chart's default one if unset. */
function tickFont(options: object): Partial<FontSpec> {
  const { ticks } = options as { ticks?: { font?: Partial<FontSpec> } };
  return ticks?.font ?? Chart.defaults.font;
}

/**
 * *label* whole when it is at most *maxPx* wide, else its longest middle-cut
 * form that is (`measure` gives a text's width in pixels).
 */
export function fitLabel(label: string, maxPx: number, measure: (text: string) => number): string {
  if (measure(label) <= maxPx) {
    return label;
  }
  let chars = Array.from(label).length - 1;
  while (chars > 2 && measure(shortenLabel(label, chars)) > maxPx) {
    chars -= 1;
  }
  return shortenLabel(label, chars);
}

/**
 * Break a `breakdown_by_*` object into slices by cost, largest first.
 *
 * Past *maxSlices* the smallest entries are summed into one `other` slice so
 * a long tail of models stays readable. Ties keep a stable, named order.
 */
export function sliceByCost(breakdown: Record<string, Breakdown>, maxSlices: number): SliceData {
  const entries = Object.entries(breakdown).sort(
    ([nameA, a], [nameB, b]) => b.cost - a.cost || b.calls - a.calls || nameA.localeCompare(nameB),
  );
  const kept = entries.length > maxSlices ? entries.slice(0, Math.max(1, maxSlices - 1)) : entries;
  const rest = entries.slice(kept.length);

  const data: SliceData = {
    labels: kept.map(([name]) => name),
    costUsd: kept.map(([, item]) => item.cost),
    calls: kept.map(([, item]) => item.calls),
  };
  if (rest.length > 0) {
    data.labels.push(OTHER_LABEL);
    data.costUsd.push(sum(rest.map(([, item]) => item.cost)));
    data.calls.push(sum(rest.map(([, item]) => item.calls)));
  }

  return data;
}

export function costByModel(usage: Usage, maxSlices = 6): SliceData {
  return sliceByCost(usage.breakdown_by_model, maxSlices);
}

export function costByPurpose(usage: Usage, maxBars = 10): SliceData {
  return sliceByCost(usage.breakdown_by_purpose, maxBars);
}

/** True when a chart of *data* would have nothing to draw. */
export function hasNoCost(data: SliceData): boolean {
  return !data.costUsd.some((value) => value > 0);
}

export function historySeries(history: History): HistorySeries {
  return {
    labels: history.data.map((day) => formatDay(day.date)),
    costUsd: history.data.map((day) => day.cost),
    tokens: history.data.map((day) => day.tokens),
  };
}

function sum(values: number[]): number {
  return values.reduce((total, value) => total + value, 0);
}

// Distinct hues that keep their contrast on a white and on a near-black card.
export const PALETTE = [
  "#4f7cff",
  "#22b07d",
  "#f5a524",
  "#e5484d",
  "#8e6cef",
  "#12a5c2",
  "#d4548f",
  "#8a8f98",
] as const;

export function sliceColours(count: number): string[] {
  return Array.from({ length: count }, (_, index) => PALETTE[index % PALETTE.length] ?? "#888");
}

interface Theme {
  text: string;
  muted: string;
  grid: string;
  surface: string;
  cost: string;
  tokens: string;
}

function readTheme(): Theme {
  const style = getComputedStyle(document.documentElement);
  const read = (name: string, fallback: string): string =>
    style.getPropertyValue(name).trim() || fallback;
  return {
    text: read("--text", "#1b1f24"),
    muted: read("--muted", "#5d6672"),
    grid: read("--grid", "rgba(0, 0, 0, 0.08)"),
    surface: read("--surface", "#ffffff"),
    cost: read("--cost", PALETTE[0]),
    tokens: read("--tokens", PALETTE[1]),
  };
}

function prefersReducedMotion(): boolean {
  return window.matchMedia("(prefers-reduced-motion: reduce)").matches;
}

export interface ChartCanvases {
  models: HTMLCanvasElement;
  history: HTMLCanvasElement;
  purposes: HTMLCanvasElement;
}

/** Owns the page's Chart.js instances and redraws them in place on refresh. */
export class Charts {
  private theme: Theme = readTheme();
  private readonly models: Chart<"doughnut", number[], string>;
  private readonly history: Chart<"line", number[], string>;
  private readonly purposes: Chart<"bar", number[], string>;

  constructor(canvases: ChartCanvases) {
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    // Set the duration in place: Chart.js reads which options an animation
    // has from the keys of this object, so a new object without `type` and
    // `easing` would leave colours with no interpolator (a TypeError per frame).
    if (prefersReducedMotion()) {
      Chart.defaults.animation = false;
    } else if (Chart.defaults.animation) {
      Chart.defaults.animation.duration = 250;
    }
    Chart.defaults.maintainAspectRatio = false;
    this.models = new Chart(
      canvases.models,
      modelsConfig(() => this.theme),
    );
    this.history = new Chart(canvases.history, historyConfig());
    this.purposes = new Chart(canvases.purposes, purposesConfig());
    this.applyTheme();
  }

  showModels(data: SliceData): void {
    const dataset = this.models.data.datasets[0];
    if (dataset === undefined) {
      return;
    }
    this.models.data.labels = data.labels;
    dataset.data = data.costUsd;
    dataset.backgroundColor = sliceColours(data.labels.length);
    this.models.update();
  }

  showHistory(series: HistorySeries): void {
    const [cost, tokens] = this.history.data.datasets;
    if (cost === undefined || tokens === undefined) {
      return;
    }
    this.history.data.labels = series.labels;
    cost.data = series.costUsd;
    tokens.data = series.tokens;
    // Points clutter a 90-day line; keep them for short ranges only.
    const radius = series.labels.length > 31 ? 0 : 3;
    cost.pointRadius = radius;
    tokens.pointRadius = radius;
    this.history.update();
  }

  showPurposes(data: SliceData): void {
    const dataset = this.purposes.data.datasets[0];
    if (dataset === undefined) {
      return;
    }
    this.purposes.data.labels = data.labels;
    dataset.data = data.costUsd;
    dataset.backgroundColor = sliceColours(data.labels.length);
    this.purposes.update();
  }

  /** Re-read the colour scheme from CSS and redraw every chart with it. */
  applyTheme(): void {
    const theme = readTheme();
    this.theme = theme;
    Chart.defaults.color = theme.muted;
    Chart.defaults.borderColor = theme.grid;

    const slices = this.models.data.datasets[0];
    if (slices !== undefined) {
      slices.borderColor = theme.surface;
    }

    const [cost, tokens] = this.history.data.datasets;
    if (cost !== undefined && tokens !== undefined) {
      cost.borderColor = theme.cost;
      cost.backgroundColor = withAlpha(theme.cost, 0.15);
      cost.pointBackgroundColor = theme.cost;
      tokens.borderColor = theme.tokens;
      tokens.backgroundColor = theme.tokens;
      tokens.pointBackgroundColor = theme.tokens;
    }

    for (const chart of [this.models, this.history, this.purposes]) {
      const legend = chart.options.plugins?.legend;
      if (legend?.labels) {
        legend.labels.color = theme.text;
      }
      for (const scale of Object.values(chart.options.scales ?? {})) {
        if (scale === undefined) {
          continue;
        }
        if (scale.ticks) {
          scale.ticks.color = theme.muted;
        }
        if (scale.grid) {
          scale.grid.color = theme.grid;
        }
      }
      chart.update("none");
    }
  }
}

/** `#rrggbb` with an alpha channel; other colour syntaxes are returned as they are. */
export function withAlpha(colour: string, alpha: number): string {
  const match = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(colour);
  if (match === null) {
    return colour;
  }
  const [red, green, blue] = match.slice(1).map((hex) => Number.parseInt(hex, 16));
  return `rgba(${red}, ${green}, ${blue}, ${alpha})`;
}

function shareOf(item: TooltipItem<"doughnut">): string {
  const values = item.dataset.data;
  const total = sum(values);
  return total > 0 ? formatPercent(item.parsed / total) : formatPercent(0);
}

/** Writes the total of the visible slices in the doughnut's hole. */
function centreTotal(theme: () => Theme): Plugin<"doughnut"> {
  return {
    id: "centreTotal",
    afterDatasetsDraw(chart) {
      const arc = chart.getDatasetMeta(0).data[0];
      const values = chart.data.datasets[0]?.data ?? [];
      if (arc === undefined || values.length === 0) {
        return;
      }
      const total = sum(values.filter((_, index) => chart.getDataVisibility(index)));
      // With nothing spent the card says so in words instead.
      if (total <= 0) {
        return;
      }
      const { x, y } = arc.getProps(["x", "y"], true) as { x: number; y: number };
      const { ctx } = chart;
      const family = Chart.defaults.font.family ?? "sans-serif";
      ctx.save();
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillStyle = theme().text;
      ctx.font = `650 18px ${family}`;
      ctx.fillText(formatUsd(total), x, y - 7);
      ctx.fillStyle = theme().muted;
      ctx.font = `12px ${family}`;
      ctx.fillText("total", x, y + 12);
      ctx.restore();
    },
  };
}

function modelsConfig(theme: () => Theme): ChartConfiguration<"doughnut", number[], string> {
  return {
    type: "doughnut",
    plugins: [centreTotal(theme)],
    data: { labels: [], datasets: [{ data: [], borderWidth: 2 }] },
    options: {
      cutout: "62%",
      plugins: {
        legend: {
          position: "bottom",
          labels: {
            boxWidth: 10,
            boxHeight: 10,
            padding: 8,
            font: { size: 11 },
            generateLabels: (chart) =>
              Chart.overrides.doughnut.plugins.legend.labels
                .generateLabels(chart)
                .map((item) => ({ ...item, text: shortenLabel(item.text, LEGEND_LABEL_CHARS) })),
          },
        },
        tooltip: {
          callbacks: {
            title: (items) => items[0]?.label ?? "",
            label: (item) => ` ${formatUsd(item.parsed)} (${shareOf(item)})`,
          },
        },
      },
    },
  };
}

function historyConfig(): ChartConfiguration<"line", number[], string> {
  return {
    type: "line",
    data: {
      labels: [],
      datasets: [
        { label: "Cost", data: [], yAxisID: "cost", fill: true, tension: 0.3, borderWidth: 2 },
        {
          label: "Tokens",
          data: [],
          yAxisID: "tokens",
          tension: 0.3,
          borderWidth: 2,
        },
      ],
    },
    options: {
      interaction: { mode: "index", intersect: false },
      plugins: {
        legend: {
          position: "bottom",
          labels: {
            usePointStyle: true,
            pointStyle: "circle",
            boxWidth: 8,
            boxHeight: 8,
            padding: 14,
          },
        },
        tooltip: {
          callbacks: {
            label: (item) =>
              item.datasetIndex === 0
                ? ` Cost ${formatUsd(item.parsed.y)}`
                : ` Tokens ${formatTokens(item.parsed.y)}`,
          },
        },
      },
      scales: {
        x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 12 } },
        cost: {
          position: "left",
          beginAtZero: true,
          ticks: { callback: (value) => formatUsd(Number(value)), maxTicksLimit: 6 },
        },
        tokens: {
          position: "right",
          beginAtZero: true,
          grid: { drawOnChartArea: false },
          ticks: {
            callback: (value) => formatTokensShort(Number(value)),
            maxTicksLimit: 6,
            precision: 0,
          },
        },
      },
    },
  };
}

function purposesConfig(): ChartConfiguration<"bar", number[], string> {
  return {
    type: "bar",
    data: {
      labels: [],
      datasets: [{ label: "Cost", data: [], borderRadius: 4, maxBarThickness: 28 }],
    },
    options: {
      indexAxis: "y",
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: { label: (item) => ` ${formatUsd(item.parsed.x)}` },
        },
      },
      scales: {
        x: {
          beginAtZero: true,
          ticks: { callback: (value) => formatUsd(Number(value)), maxTicksLimit: 5 },
        },
        y: {
          grid: { display: false },
          ticks: {
            callback(value) {
              const label = this.getLabelForValue(Number(value));
              const { ctx } = this;
              ctx.save();
              ctx.font = toFont(tickFont(this.options)).string;
              const room = this.chart.width / 2 - AXIS_SLACK_PX;
              const text = fitLabel(label, room, (candidate) => ctx.measureText(candidate).width);
              ctx.restore();
              return text;
            },
          },
        },
      },
    },
  };
}
