/**
 * Every number, amount and time the page shows is formatted here.
 *
 * Amounts are US dollars, as the gateway prices them; the page writes them
 * the American way whatever the browser's language, so a figure reads the
 * same on every screen that shows it.
 */

const LOCALE = "en-US";

/** Shown wherever a figure is missing or not known. */
export const MISSING = "—";

const integer = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 0 });
const oneDecimal = new Intl.NumberFormat(LOCALE, {
  minimumFractionDigits: 1,
  maximumFractionDigits: 1,
});

function isNumber(value: number | null | undefined): value is number {
  return typeof value === "number" && Number.isFinite(value);
}

/** `1234567` → `1,234,567`. */
export function formatInteger(value: number | null | undefined): string {
  return isNumber(value) ? integer.format(Math.round(value)) : MISSING;
}

/** Token counts: exact below a million, then `1.2M`, `3.4B`. */
export function formatTokens(value: number | null | undefined): string {
  if (!isNumber(value)) {
    return MISSING;
  }
  const size = Math.abs(value);
  if (size >= 1e9) {
    return `${oneDecimal.format(value / 1e9)}B`;
  }
  if (size >= 1e6) {
    return `${oneDecimal.format(value / 1e6)}M`;
  }
  return integer.format(Math.round(value));
}

/** Short token counts for chart axes and tight table cells: `950`, `12k`, `1.2M`. */
export function formatTokensShort(value: number | null | undefined): string {
  if (!isNumber(value)) {
    return MISSING;
  }
  const size = Math.abs(value);
  if (size >= 1e6) {
    return formatTokens(value);
  }
  if (size >= 1e4) {
    return `${integer.format(value / 1e3)}k`;
  }
  if (size >= 1e3) {
    return `${oneDecimal.format(value / 1e3)}k`;
  }
  return integer.format(Math.round(value));
}

/**
 * Dollar amounts with as many decimals as a small amount needs.
 *
 * One call often costs a fraction of a cent, so below a cent the amount keeps
 * two significant digits (`$0.00042`) instead of showing as `$0.00`.
 */
export function formatUsd(value: number | null | undefined): string {
  if (!isNumber(value)) {
    return MISSING;
  }
  const size = Math.abs(value);
  let digits: number;
  if (size === 0 || size >= 1000) {
    digits = size === 0 ? 2 : 0;
  } else if (size >= 0.01) {
    digits = 2;
  } else {
    // Enough decimals for two significant digits, and at most eight.
    digits = Math.min(8, Math.max(3, 1 - Math.floor(Math.log10(size))));
  }
  const text = new Intl.NumberFormat(LOCALE, {
    minimumFractionDigits: Math.min(digits, 2),
    maximumFractionDigits: digits,
  }).format(size);
  return `${value < 0 ? "-" : ""}$${text}`;
}

/**
 * Dollar amounts for a column of per-call or per-cycle costs: four decimals
 * below a dollar so the column lines up, `<$0.0001` for a cost that rounds
 * to nothing but is not zero.
 */
export function formatUsdFine(value: number | null | undefined): string {
  if (!isNumber(value)) {
    return MISSING;
  }
  const size = Math.abs(value);
  if (size >= 1) {
    return formatUsd(value);
  }
  if (size > 0 && size < 0.00005) {
    return value < 0 ? "-<$0.0001" : "<$0.0001";
  }
  const text = new Intl.NumberFormat(LOCALE, {
    minimumFractionDigits: 4,
    maximumFractionDigits: 4,
  }).format(size);
  return `${value < 0 ? "-" : ""}$${text}`;
}

/** Latencies: `850 ms` below a second, then `1.2 s`. */
export function formatMs(value: number | null | undefined): string {
  if (!isNumber(value)) {
    return MISSING;
  }
  if (Math.abs(value) >= 1000) {
    return `${oneDecimal.format(value / 1000)} s`;
  }
  return `${integer.format(Math.round(value))} ms`;
}

/** A ratio as a percentage: `0.093` → `9%`, small non-zero ratios as `<1%`. */
export function formatPercent(ratio: number | null | undefined): string {
  if (!isNumber(ratio)) {
    return MISSING;
  }
  if (ratio > 0 && ratio < 0.01) {
    return "<1%";
  }
  return `${integer.format(ratio * 100)}%`;
}

function toDate(value: Date | string | null | undefined): Date | null {
  if (value === null || value === undefined) {
    return null;
  }
  const date = value instanceof Date ? value : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** Wall-clock time, `09:31:05`, in the browser's time zone unless one is given. */
export function formatClock(value: Date | string | null | undefined, timeZone?: string): string {
  const date = toDate(value);
  if (date === null) {
    return MISSING;
  }
  return new Intl.DateTimeFormat(LOCALE, {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hourCycle: "h23",
    ...(timeZone === undefined ? {} : { timeZone }),
  }).format(date);
}

/** Whether *a* and *b* fall on the same calendar day in *timeZone*. */
function isSameDay(a: Date, b: Date, timeZone?: string): boolean {
  const day = new Intl.DateTimeFormat(LOCALE, {
    dateStyle: "short",
    ...(timeZone === undefined ? {} : { timeZone }),
  });
  return day.format(a) === day.format(b);
}

/**
 * A call or cycle time: the clock alone when it is on the day of *now*,
 * otherwise `Dec 2, 14:05`.
 */
export function formatTimestamp(
  value: Date | string | null | undefined,
  now: Date = new Date(),
  timeZone?: string,
): string {
  const date = toDate(value);
  if (date === null) {
    return MISSING;
  }
  const zone = timeZone === undefined ? {} : { timeZone };
  if (isSameDay(date, now, timeZone)) {
    return formatClock(date, timeZone);
  }
  return new Intl.DateTimeFormat(LOCALE, {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    hourCycle: "h23",
    ...zone,
  }).format(date);
}

/** The start of a period: `06:00` when it is on the day of *now*, else `Dec 2`. */
export function formatSince(
  value: Date | string | null | undefined,
  now: Date = new Date(),
  timeZone?: string,
): string {
  const date = toDate(value);
  if (date === null) {
    return MISSING;
  }
  const zone = timeZone === undefined ? {} : { timeZone };
  if (isSameDay(date, now, timeZone)) {
    return new Intl.DateTimeFormat(LOCALE, {
      hour: "2-digit",
      minute: "2-digit",
      hourCycle: "h23",
      ...zone,
    }).format(date);
  }
  const year = new Intl.DateTimeFormat(LOCALE, { year: "numeric", ...zone });
  return new Intl.DateTimeFormat(LOCALE, {
    month: "short",
    day: "numeric",
    ...(year.format(date) === year.format(now) ? {} : { year: "numeric" }),
    ...zone,
  }).format(date);
}

/** A calendar day from the history API (`2026-12-03`) as `Dec 3`. */
export function formatDay(isoDay: string): string {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(isoDay);
  if (match === null) {
    return isoDay;
  }
  // The day is a calendar date, not an instant: format it in UTC so the
  // browser's time zone cannot move it to the day before.
  const date = new Date(Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3])));
  return new Intl.DateTimeFormat(LOCALE, {
    month: "short",
    day: "numeric",
    timeZone: "UTC",
  }).format(date);
}

/** How long ago *then* was: `just now`, `45 s ago`, `3 min ago`, `2 h ago`. */
export function formatAgo(then: Date, now: Date = new Date()): string {
  const seconds = Math.max(0, Math.round((now.getTime() - then.getTime()) / 1000));
  if (seconds < 5) {
    return "just now";
  }
  if (seconds < 60) {
    return `${seconds} s ago`;
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min ago`;
  }
  const hours = Math.floor(minutes / 60);
  if (hours < 48) {
    return `${hours} h ago`;
  }
  return `${Math.floor(hours / 24)} days ago`;
}

/**
 * A name cut to *maxChars* characters (two at least) for a chart's legend or
 * axis, keeping both ends (`accounts/fir…ong-context`): model names differ at
 * the end, purposes at the start. The chart's tooltip shows the whole name.
 */
export function shortenLabel(text: string, maxChars: number): string {
  const chars = Array.from(text);
  if (chars.length <= maxChars) {
    return text;
  }
  const kept = Math.max(1, maxChars - 1);
  const head = Math.ceil(kept / 2);
  const tail = kept - head;
  return `${chars.slice(0, head).join("")}…${tail > 0 ? chars.slice(-tail).join("") : ""}`;
}
