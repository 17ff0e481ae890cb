/**
 * Wires the page: fetches every figure, renders it, refreshes on a timer,
 * and says so when what is on screen is no longer current.
 *
 * Each refresh asks the API for five things at once (the selected period,
 * the session, the history, the latest cycles and calls). A section whose
 * answer failed keeps its previous figures, greyed out; when the gateway
 * cannot be reached at all the whole page is greyed and a banner says since
 * when the figures date.
 */

import "./styles.css";

import {
  ApiClient,
  ApiError,
  browserTokenStore,
  UnauthorizedError,
  UnreachableError,
  type Budget,
  type Call,
  type Cycle,
  type History,
  type Period,
  type Usage,
} from "./api";
import { Charts, costByModel, costByPurpose, hasNoCost, historySeries } from "./charts";
import {
  formatAgo,
  formatClock,
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
} from "./format";

type SelectablePeriod = Exclude<Period, "session">;
type Section = "usage" | "session" | "history" | "cycles" | "calls";

const PERIODS: readonly SelectablePeriod[] = ["today", "week", "month", "all"];
const HISTORY_DAYS = [7, 30, 90] as const;
const CYCLES_LIMIT = 20;
const CALLS_LIMIT = 50;
const DEFAULT_REFRESH_MS = 60_000;

const SECTION_NAMES: Record<Section, string> = {
  usage: "period totals",
  session: "session cost",
  history: "daily history",
  cycles: "latest cycles",
  calls: "latest calls",
};

const PERIOD_NAMES: Record<SelectablePeriod, string> = {
  today: "Today",
  week: "This week",
  month: "This month",
  all: "All time",
};

/** `?refresh=SECONDS` shortens or lengthens the refresh interval; one second at least. */
function readRefreshMs(search: string): number {
  const seconds = Number(new URLSearchParams(search).get("refresh"));
  return Number.isFinite(seconds) && seconds >= 1 ? seconds * 1000 : DEFAULT_REFRESH_MS;
}

function byId<T extends HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (element === null) {
    throw new Error(`the page has no #${id}`);
  }
  return element as T;
}

function one<T extends Element>(selector: string, root: ParentNode = document): T {
  const element = root.querySelector<T>(selector);
  if (element === null) {
    throw new Error(`the page has no ${selector}`);
  }
  return element;
}

function setText(selector: string, text: string, root: ParentNode = document): void {
  one<HTMLElement>(selector, root).textContent = text;
}

function setKpi(name: string, text: string, raw: number | null): void {
  const element = one<HTMLElement>(`[data-kpi="${name}"]`);
  element.textContent = text;
  element.title = text;
  element.dataset["value"] = raw === null ? "" : String(raw);
}

// The chosen period and range live in the URL's fragment (`#period=week&days=30`),
// so a reload or a bookmark keeps them and a fresh visit starts on today.
function fragmentParams(): URLSearchParams {
  return new URLSearchParams(location.hash.slice(1));
}

function periodFromUrl(): SelectablePeriod {
  const value = fragmentParams().get("period");
  return PERIODS.find((period) => period === value) ?? "today";
}

function historyDaysFromUrl(): number {
  const value = Number(fragmentParams().get("days"));
  return HISTORY_DAYS.find((days) => days === value) ?? HISTORY_DAYS[0];
}

function rememberChoices(): void {
  const params = new URLSearchParams();
  if (state.period !== "today") {
    params.set("period", state.period);
  }
  if (state.historyDays !== HISTORY_DAYS[0]) {
    params.set("days", String(state.historyDays));
  }
  const fragment = params.toString();
  window.history.replaceState(
    null,
    "",
    fragment ? `#${fragment}` : location.pathname + location.search,
  );
}

interface State {
  period: SelectablePeriod;
  historyDays: number;
  refreshMs: number;
  // The newest refresh wins: an older one that answers late is dropped.
  generation: number;
  lastSuccess: Date | null;
  lastAttempt: Date | null;
  problem: "unreachable" | "unauthorized" | "partial" | null;
  // Sections whose last answer was an error, with the error, for the banner.
  failed: [Section, string][];
  timer: number | undefined;
  refreshes: number;
}

const tokens = browserTokenStore(localStorage);
const api = new ApiClient({ tokens });

const state: State = {
  period: periodFromUrl(),
  historyDays: historyDaysFromUrl(),
  refreshMs: readRefreshMs(location.search),
  generation: 0,
  lastSuccess: null,
  lastAttempt: null,
  problem: null,
  failed: [],
  timer: undefined,
  refreshes: 0,
};

let charts: Charts;

// Rendering

function renderUsage(usage: Usage): void {
  setKpi("tokens", formatTokens(usage.total_tokens), usage.total_tokens);
  setKpi("cost", formatUsd(usage.total_cost_usd), usage.total_cost_usd);
  setKpi("calls", formatInteger(usage.api_calls_count), usage.api_calls_count);
  setKpi("avg-tokens", formatInteger(usage.avg_tokens_per_call), usage.avg_tokens_per_call);
  setKpi("avg-latency", formatMs(usage.avg_response_time_ms), usage.avg_response_time_ms);

  const tokensDetail = one<HTMLElement>('[data-detail="tokens"]');
  tokensDetail.textContent = `${formatTokensShort(usage.input_tokens)} in · ${formatTokensShort(usage.output_tokens)} out`;
  tokensDetail.title =
    `${formatInteger(usage.input_tokens)} input (${formatInteger(usage.cached_input_tokens)} cached), ` +
    `${formatInteger(usage.output_tokens)} output (${formatInteger(usage.reasoning_tokens)} reasoning)`;
  const models = Object.keys(usage.breakdown_by_model).length;
  setText('[data-detail="cost"]', `${models} ${models === 1 ? "model" : "models"}`);
  const errors = usage.errors_count;
  setText(
    '[data-detail="calls"]',
    errors === 0 ? "no errors" : `${formatInteger(errors)} ${errors === 1 ? "error" : "errors"}`,
  );

  setText("#period-range", describeRange(usage));
  renderBudget("daily", usage.budget.daily);
  renderBudget("monthly", usage.budget.monthly);

  const byModel = costByModel(usage);
  charts.showModels(byModel);
  one<HTMLElement>('[data-empty="models"]').hidden = !hasNoCost(byModel);
  const byPurpose = costByPurpose(usage);
  charts.showPurposes(byPurpose);
  one<HTMLElement>('[data-empty="purposes"]').hidden = !hasNoCost(byPurpose);
}

function describeRange(usage: Usage): string {
  const name = PERIOD_NAMES[usage.period as SelectablePeriod] ?? usage.period;
  if (usage.from === null) {
    return name;
  }
  return `${name} · since ${formatSince(usage.from)}`;
}

function renderBudget(name: "daily" | "monthly", budget: Budget): void {
  const card = one<HTMLElement>(`[data-budget="${name}"]`);
  const fill = one<HTMLElement>(".bar-fill", card);
  const meter = one<HTMLElement>(".bar", card);
  card.classList.remove("level-green", "level-yellow", "level-red", "no-limit");
  card.dataset["level"] = budget.level;

  if (budget.limit_usd === null) {
    card.classList.add("no-limit");
    fill.style.width = "0";
    meter.removeAttribute("aria-valuenow");
    setText(".budget-state", "no limit", card);
    setText(".budget-text", `${formatUsd(budget.spent_usd)} spent · no limit`, card);
    return;
  }

  const ratio = budget.ratio ?? (budget.limit_usd > 0 ? budget.spent_usd / budget.limit_usd : 1);
  card.classList.add(`level-${budget.level}`);
  fill.style.width = `${Math.min(1, Math.max(0, ratio)) * 100}%`;
  meter.setAttribute("aria-valuemin", "0");
  meter.setAttribute("aria-valuemax", "100");
  meter.setAttribute("aria-valuenow", String(Math.round(ratio * 100)));
  setText(
    ".budget-state",
    ratio >= 1 ? `${formatPercent(ratio)} · over` : formatPercent(ratio),
    card,
  );
  setText(".budget-text", `${formatUsd(budget.spent_usd)} of ${formatUsd(budget.limit_usd)}`, card);
}

function renderSession(session: Usage): void {
  setKpi("session-cost", formatUsd(session.total_cost_usd), session.total_cost_usd);
  const since = session.from === null ? "" : ` · since ${formatSince(session.from)}`;
  setText('[data-detail="session"]', `${formatInteger(session.api_calls_count)} calls${since}`);
}

function renderHistory(history: History): void {
  charts.showHistory(historySeries(history));
}

function cell(text: string, className = ""): HTMLTableCellElement {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) {
    td.className = className;
  }
  // A clipped cell keeps its whole text in the tooltip.
  if (className.split(" ").includes("clip")) {
    td.title = text;
  }
  return td;
}

function fillTable(selector: string, rows: HTMLTableRowElement[], emptyText: string): void {
  const body = one<HTMLTableSectionElement>(`${selector} tbody`);
  if (rows.length === 0) {
    const row = document.createElement("tr");
    const td = cell(emptyText, "empty-row");
    td.colSpan = one<HTMLTableRowElement>(`${selector} thead tr`).cells.length;
    row.append(td);
    rows = [row];
  }
  body.replaceChildren(...rows);
}

function renderCycles(cycles: Cycle[], now: Date): void {
  const rows = cycles.map((cycle) => cycleRow(cycle, now));
  fillTable("#cycles-table", rows, "No cycles recorded yet");
}

function renderCalls(calls: Call[], now: Date): void {
  const rows = calls.map((call) => callRow(call, now));
  fillTable("#calls-table", rows, "No calls recorded yet");
}

function cycleRow(cycle: Cycle, now: Date): HTMLTableRowElement {
  const row = document.createElement("tr");
  row.append(
    cell(cycle.cycle_id, "mono clip"),
    cell(formatTimestamp(cycle.last_call, now)),
    cell(formatInteger(cycle.calls), "num"),
    cell(formatTokensShort(cycle.tokens), "num"),
    cell(formatUsdFine(cycle.cost), "num"),
    // Lists and free-text tags are clipped (whole in the tooltip): one long
    // purpose must not push the figures out of the card.
    cell(
      cycle.tickers.join(", ") || MISSING,
      cycle.tickers.length ? "wide-only clip" : "wide-only dim",
    ),
    cell(
      cycle.purposes.join(", ") || MISSING,
      cycle.purposes.length ? "wide-only clip" : "wide-only dim",
    ),
  );
  return row;
}

function callRow(call: Call, now: Date): HTMLTableRowElement {
  const row = document.createElement("tr");
  const cost = cell(formatUsdFine(call.cost), call.cost === null ? "num dim" : "num");
  if (call.cost === null) {
    cost.title = "no price known for this model";
  }
  const time = cell(formatTimestamp(call.timestamp, now));
  time.title = call.timestamp;
  const model = cell(call.model, "clip");
  model.title = `${call.model} · ${call.upstream} ${call.endpoint}${call.streamed ? " (streamed)" : ""}`;
  row.append(
    time,
    model,
    cell(call.purpose ?? MISSING, call.purpose === null ? "wide-only dim" : "wide-only clip"),
    cell(call.ticker ?? MISSING, call.ticker === null ? "wide-only dim" : "wide-only"),
    cell(formatTokensShort(call.tokens), "num"),
    cost,
    cell(formatMs(call.response_time_ms), "num wide-only"),
    cell(String(call.status), call.status >= 400 ? "num bad" : "num"),
  );
  return row;
}

// Section and page state

function sectionElements(section: Section): HTMLElement[] {
  return Array.from(document.querySelectorAll<HTMLElement>(`[data-section="${section}"]`));
}

function markSection(section: Section, error: string | null): void {
  for (const element of sectionElements(section)) {
    if (error === null) {
      delete element.dataset["stale"];
    } else {
      element.dataset["stale"] = "";
    }
    const note = element.querySelector<HTMLElement>(".section-error");
    if (note !== null) {
      note.hidden = error === null;
      note.textContent = error === null ? "" : `Could not load: ${error}`;
    }
  }
}

function showBanner(text: string, action: { label: string; run: () => void } | null): void {
  const banner = byId("banner");
  setText("#banner-text", text);
  const button = byId<HTMLButtonElement>("banner-action");
  button.hidden = action === null;
  button.onclick = action === null ? null : action.run;
  if (action !== null) {
    button.textContent = action.label;
  }
  banner.hidden = false;
}

function hideBanner(): void {
  byId("banner").hidden = true;
}

function renderStatus(now: Date = new Date()): void {
  const dot = byId("status-dot");
  const label = byId("last-refresh");
  const isStale = state.problem === "unreachable" || state.problem === "unauthorized";
  dot.classList.toggle("is-ok", state.problem === null && state.lastSuccess !== null);
  dot.classList.toggle("is-partial", state.problem === "partial");
  dot.classList.toggle("is-stale", isStale);
  document.body.classList.toggle("is-stale", isStale);

  if (state.lastSuccess === null) {
    label.textContent = state.problem === null ? "Loading…" : "No data yet";
    label.title = "";
    return;
  }
  const when = formatClock(state.lastSuccess);
  const ago = formatAgo(state.lastSuccess, now);
  if (state.problem === null) {
    label.textContent = `Updated ${when}`;
  } else if (state.problem === "partial") {
    label.textContent = `Partly updated ${when}`;
  } else {
    label.textContent = `Stale · from ${when} (${ago})`;
  }
  label.title = `Last successful refresh ${state.lastSuccess.toISOString()}`;
}

function renderProblem(): void {
  if (state.problem === null) {
    hideBanner();
    return;
  }
  if (state.problem === "partial") {
    const failures = state.failed.map(([section, error]) => `${SECTION_NAMES[section]} (${error})`);
    showBanner(
      `Some figures could not be loaded: ${failures.join("; ")}. They are greyed out and not current.`,
      { label: "Retry now", run: () => void refresh() },
    );
    return;
  }
  const since =
    state.lastSuccess === null
      ? ""
      : ` The figures below are from ${formatClock(state.lastSuccess)} and are not current.`;
  if (state.problem === "unauthorized") {
    showBanner(`The gateway needs its admin token.${since}`, {
      label: "Enter token",
      run: askForToken,
    });
    return;
  }
  const retry = Math.round(state.refreshMs / 1000);
  showBanner(`Cannot reach the gateway.${since} Retrying every ${retry} s.`, {
    label: "Retry now",
    run: () => void refresh(),
  });
}

// Refresh loop

type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

async function settle<T>(promise: Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    return { ok: false, error };
  }
}

/**
 * Render a section's answer, turning a failure to render into that
 * section's error: an answer of an unexpected shape must not stop the
 * refresh loop or leave the rest of the page unrendered.
 */
function show<T>(outcome: Outcome<T>, render: (value: T) => void): Outcome<void> {
  if (!outcome.ok) {
    return outcome;
  }
  try {
    render(outcome.value);
    return { ok: true, value: undefined };
  } catch (error) {
    console.warn("could not render an API answer", error);
    return { ok: false, error: new Error(`unexpected answer: ${describeError(error)}`) };
  }
}

function schedule(): void {
  window.clearTimeout(state.timer);
  state.timer = window.setTimeout(() => void refresh(), state.refreshMs);
}

async function refresh(): Promise<void> {
  const generation = ++state.generation;
  state.lastAttempt = new Date();
  schedule();

  const [usage, session, history, cycles, calls] = await Promise.all([
    settle(api.usage(state.period)),
    settle(api.usage("session")),
    settle(api.history(state.historyDays)),
    settle(api.cycles(CYCLES_LIMIT)),
    settle(api.calls(CALLS_LIMIT)),
  ]);
  if (generation !== state.generation) {
    return;
  }

  const errors = [usage, session, history, cycles, calls].flatMap((outcome) =>
    outcome.ok ? [] : [outcome.error],
  );
  if (errors.some((error) => error instanceof UnreachableError)) {
    state.problem = "unreachable";
  } else if (errors.some((error) => error instanceof UnauthorizedError)) {
    state.problem = "unauthorized";
  } else {
    const now = new Date();
    const shown: [Section, Outcome<void>][] = [
      ["usage", show(usage, renderUsage)],
      ["session", show(session, renderSession)],
      ["history", show(history, renderHistory)],
      ["cycles", show(cycles, (value) => renderCycles(value.cycles, now))],
      ["calls", show(calls, (value) => renderCalls(value.calls, now))],
    ];
    state.failed = [];
    for (const [section, outcome] of shown) {
      const error = outcome.ok ? null : describeError(outcome.error);
      markSection(section, error);
      if (error !== null) {
        state.failed.push([section, error]);
      }
    }
    state.problem = state.failed.length > 0 ? "partial" : null;
    // A refresh where nothing loaded brought nothing newer to the page.
    if (state.failed.length < shown.length) {
      state.lastSuccess = now;
    }
  }

  renderProblem();
  renderStatus();
  // Lets a browser test wait for a refresh to land instead of sleeping.
  document.body.dataset["refreshes"] = String(++state.refreshes);
  if (state.problem === "unauthorized") {
    window.clearTimeout(state.timer);
    askForToken();
  }
}

function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    return `${error.message} (HTTP ${error.status})`;
  }
  return error instanceof Error ? error.message : String(error);
}

// Admin token

function askForToken(): void {
  const dialog = byId<HTMLDialogElement>("token-dialog");
  if (dialog.open) {
    return;
  }
  byId("token-error").hidden = tokens.get() === null;
  byId<HTMLInputElement>("token-input").value = "";
  dialog.showModal();
}

function wireTokenForm(): void {
  const form = byId<HTMLFormElement>("token-form");
  form.addEventListener("submit", () => {
    const token = byId<HTMLInputElement>("token-input").value.trim();
    if (token) {
      tokens.set(token);
      void refresh();
    }
  });
}

// Controls

function selectPeriod(period: SelectablePeriod): void {
  state.period = period;
  for (const button of document.querySelectorAll<HTMLButtonElement>("[data-period]")) {
    button.setAttribute("aria-pressed", String(button.dataset["period"] === period));
  }
}

function wireControls(): void {
  for (const button of document.querySelectorAll<HTMLButtonElement>("[data-period]")) {
    button.addEventListener("click", () => {
      const period = PERIODS.find((item) => item === button.dataset["period"]);
      if (period !== undefined && period !== state.period) {
        selectPeriod(period);
        rememberChoices();
        void refresh();
      }
    });
  }

  const days = byId<HTMLSelectElement>("history-days");
  days.value = String(state.historyDays);
  days.addEventListener("change", () => {
    state.historyDays = Number(days.value);
    rememberChoices();
    void refresh();
  });

  byId("refresh-now").addEventListener("click", () => void refresh());

  // A tab left in the background may have missed refreshes; catch up at once.
  document.addEventListener("visibilitychange", () => {
    const last = state.lastAttempt?.getTime() ?? 0;
    if (document.visibilityState === "visible" && Date.now() - last >= state.refreshMs) {
      void refresh();
    }
  });

  window
    .matchMedia("(prefers-color-scheme: dark)")
    .addEventListener("change", () => charts.applyTheme());

  const topbar = one<HTMLElement>(".topbar");
  const placeBanner = (): void => {
    document.documentElement.style.setProperty("--topbar-height", `${topbar.offsetHeight}px`);
  };
  new ResizeObserver(placeBanner).observe(topbar);
}

function start(): void {
  charts = new Charts({
    models: byId<HTMLCanvasElement>("chart-models"),
    history: byId<HTMLCanvasElement>("chart-history"),
    purposes: byId<HTMLCanvasElement>("chart-purposes"),
  });
  selectPeriod(state.period);
  wireControls();
  wireTokenForm();
  // "Updated 09:31" stays put, but "stale · 3 min ago" must keep counting.
  window.setInterval(() => renderStatus(), 5_000);
  void refresh();
}

start();
