"""
The words of the bot: ``/tokens``, ``/status``, ``/help``, the daily summary
and budget alerts, in English and Italian.

The figures come from the daily rollup (a few hundred rows however many calls
are stored); the same text serves Telegram (``as_html=True``: every value
escaped, for ``parse_mode=HTML``) and ``tallygate report`` in a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal

import asyncpg

from gateway import db, stats
from gateway.clock import utc_now
from gateway.config import Settings
from gateway.limits import Limit, window_bounds

Language = Literal["en", "it"]
Period = Literal["today", "week", "month"]
PERIODS: tuple[Period, ...] = ("today", "week", "month")
# Past this many models the rest are summed into one line.
MAX_MODEL_LINES = 10

TEXTS: dict[Language, dict[str, str]] = {
    "en": {
        "title": "📊 LLM token usage",
        "today": "📅 Today:",
        "week": "📅 Last 7 days:",
        "month": "📈 This month:",
        "tokens": "Tokens",
        "cost": "Cost",
        "calls": "Calls",
        "per_day": "Avg per day",
        "by_model.today": "💰 By model (today):",
        "by_model.week": "💰 By model (last 7 days):",
        "by_model.month": "💰 By model (this month):",
        "others": "{count} more",
        "no_calls": "no calls",
        "latency": "Avg response time",
        "updated": "Updated: {time} UTC",
        "status_title": "🟢 Gateway status",
        "status_title_degraded": "🟠 Gateway status",
        "uptime": "⏱ Uptime:",
        "upstreams": "🔀 Upstreams:",
        "database": "🗄 Database:",
        "database_ok": "ok",
        "database_down": "unreachable",
        "queue": "📥 Recorder queue:",
        "spool": "💾 Spool:",
        "cost_today": "💰 LLM cost today:",
        "unknown": "unknown",
        "unavailable": (
            "⚠️ The figures cannot be read now: the database does not answer."
        ),
        "help": (
            "🤖 Commands\n\n"
            "/tokens: token usage and cost today and this month\n"
            "/status: the gateway's state\n"
            "/help: this message"
        ),
        "summary_title": "🌙 Daily summary: {day}",
        "avg_tokens": "Avg tokens per call",
        "alert_title": "⚠️ Budget alert",
        "alert_over": "🚨 Budget exceeded",
        "alert_body": (
            "{budget} budget ({window} from {start}) reached {percent}: "
            "spent {spent} of {limit}."
        ),
        "alert_enforced": "New calls in its scope are refused until the window ends.",
        "window.day": "day",
        "window.month": "month",
    },
    "it": {
        "title": "📊 Consumo Token LLM",
        "today": "📅 Oggi:",
        "week": "📅 Ultimi 7 giorni:",
        "month": "📈 Questo mese:",
        "tokens": "Token",
        "cost": "Costo",
        "calls": "Chiamate",
        "per_day": "Media al giorno",
        "by_model.today": "💰 Per modello (oggi):",
        "by_model.week": "💰 Per modello (ultimi 7 giorni):",
        "by_model.month": "💰 Per modello (questo mese):",
        "others": "altri {count}",
        "no_calls": "nessuna chiamata",
        "latency": "Tempo risposta medio",
        "updated": "Aggiornato: {time} UTC",
        "status_title": "🟢 Stato del gateway",
        "status_title_degraded": "🟠 Stato del gateway",
        "uptime": "⏱ Attivo da:",
        "upstreams": "🔀 Upstream:",
        "database": "🗄 Database:",
        "database_ok": "ok",
        "database_down": "non raggiungibile",
        "queue": "📥 Coda del recorder:",
        "spool": "💾 Spool:",
        "cost_today": "💰 Costo LLM oggi:",
        "unknown": "sconosciuto",
        "unavailable": "⚠️ Dati non disponibili: il database non risponde.",
        "help": (
            "🤖 Comandi\n\n"
            "/tokens: consumo e costo dei token oggi e questo mese\n"
            "/status: lo stato del gateway\n"
            "/help: questo messaggio"
        ),
        "summary_title": "🌙 Riepilogo giornaliero: {day}",
        "avg_tokens": "Token medi per chiamata",
        "alert_title": "⚠️ Avviso budget",
        "alert_over": "🚨 Budget superato",
        "alert_body": (
            "Budget {budget} ({window} iniziato il {start}): soglia {percent} "
            "raggiunta, spesi {spent} su {limit}."
        ),
        "alert_enforced": (
            "Le nuove chiamate del suo ambito sono rifiutate fino alla fine "
            "della finestra."
        ),
        "window.day": "giorno",
        "window.month": "mese",
    },
}


# -- figures -----------------------------------------------------------------


@dataclass(slots=True)
class Figures:
    """Sums over some days of the rollup."""

    calls: int = 0
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    latency_ms_sum: float = 0.0
    latency_count: int = 0

    def add(self, other: Figures) -> None:
        self.calls += other.calls
        self.tokens += other.tokens
        self.cost_usd += other.cost_usd
        self.latency_ms_sum += other.latency_ms_sum
        self.latency_count += other.latency_count

    @property
    def avg_latency_ms(self) -> float | None:
        if not self.latency_count:
            return None
        return self.latency_ms_sum / self.latency_count

    @property
    def avg_tokens_per_call(self) -> int | None:
        return round(self.tokens / self.calls) if self.calls else None


@dataclass(slots=True)
class TokensSummary:
    """What ``/tokens`` shows: a period, the month, and models of the period."""

    period: Period
    at: datetime
    figures: Figures
    month: Figures
    month_days: int
    by_model: dict[str, Figures] = field(default_factory=dict)


async def read_figures_by_model(
    pool: asyncpg.Pool, first: date, end: date
) -> dict[str, Figures]:
    """Sums per model for the UTC days from *first* up to, not including, *end*."""
    # Whole days, so the statistics read the rollup; a period's name only
    # labels API answers, the range is what is summed.
    period = stats.Period("all", stats.midnight(first), stats.midnight(end))
    summary = await stats.summarize(pool, period)
    return {
        model: Figures(
            calls=totals.calls,
            tokens=totals.total_tokens,
            cost_usd=totals.cost_usd,
            latency_ms_sum=totals.latency_ms_sum,
            latency_count=totals.latency_count,
        )
        for model, totals in summary.by_model.items()
    }


def total_of(by_model: Mapping[str, Figures]) -> Figures:
    total = Figures()
    for figures in by_model.values():
        total.add(figures)
    return total


def period_first_day(period: Period, today: date) -> date:
    if period == "today":
        return today
    if period == "week":
        return today - timedelta(days=6)
    return today.replace(day=1)


async def read_tokens_summary(
    pool: asyncpg.Pool, now: datetime, period: Period = "today"
) -> TokensSummary:
    today = now.date()
    tomorrow = today + timedelta(days=1)
    month_start = window_bounds("month", now)[0].date()
    by_model = await read_figures_by_model(
        pool, period_first_day(period, today), tomorrow
    )
    month = (
        total_of(by_model)
        if period == "month"
        else total_of(await read_figures_by_model(pool, month_start, tomorrow))
    )
    return TokensSummary(
        period=period,
        at=now,
        figures=total_of(by_model),
        month=month,
        month_days=(today - month_start).days + 1,
        by_model=by_model,
    )


async def read_day_figures(pool: asyncpg.Pool, day: date) -> Figures:
    return total_of(await read_figures_by_model(pool, day, day + timedelta(days=1)))


# -- formatting --------------------------------------------------------------


def format_count(value: int) -> str:
    return f"{value:,}"


def format_usd(value: Decimal) -> str:
    return f"${value:,.4f}"


def format_ms(value: float | None, language: Language) -> str:
    if value is None:
        return TEXTS[language]["unknown"]
    return f"{round(value):,} ms"


def format_duration(seconds: float) -> str:
    minutes, _ = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    return f"{hours}h {minutes}m"


def tree(lines: list[tuple[str, str]]) -> list[str]:
    """Label/value pairs as branches, the last one closing the tree."""
    out = []
    for index, (label, value) in enumerate(lines):
        branch = "└" if index == len(lines) - 1 else "├"
        out.append(f"{branch} {label}: {value}")
    return out


class Writer:
    """Text in one language, escaped for Telegram's HTML mode when asked."""

    def __init__(self, language: Language, as_html: bool) -> None:
        self.texts = TEXTS[language]
        self.language = language
        self.escape: Callable[[str], str] = (
            (lambda s: html.escape(s, quote=False)) if as_html else (lambda s: s)
        )

    def __call__(self, key: str, **values: str) -> str:
        text = self.escape(self.texts[key])
        if values:
            text = text.format(**{k: self.escape(v) for k, v in values.items()})
        return text


def render_tokens(
    summary: TokensSummary, language: Language = "en", *, as_html: bool = False
) -> str:
    t = Writer(language, as_html)
    figures = summary.figures
    lines = [t("title"), "", t(summary.period)]
    lines += tree(
        [
            (t("tokens"), format_count(figures.tokens)),
            (t("cost"), format_usd(figures.cost_usd)),
            (t("calls"), format_count(figures.calls)),
        ]
    )
    if summary.period != "month":
        per_day = summary.month.cost_usd / summary.month_days
        lines += ["", t("month")]
        lines += tree(
            [
                (t("tokens"), format_count(summary.month.tokens)),
                (t("cost"), format_usd(summary.month.cost_usd)),
                (t("per_day"), format_usd(per_day)),
            ]
        )
    lines += ["", t(f"by_model.{summary.period}")]
    lines += tree(model_lines(summary, t)) if summary.by_model else [t("no_calls")]
    lines += [
        "",
        f"⏱ {t('latency')}: {format_ms(figures.avg_latency_ms, language)}",
        "",
        t("updated", time=summary.at.strftime("%H:%M")),
    ]
    return "\n".join(lines)


def model_lines(summary: TokensSummary, t: Writer) -> list[tuple[str, str]]:
    """Models by cost, then tokens, each with its share of the period's cost."""
    total = summary.figures.cost_usd
    ranked = sorted(
        summary.by_model.items(),
        key=lambda item: (-item[1].cost_usd, -item[1].tokens, item[0]),
    )
    shown, rest = ranked[:MAX_MODEL_LINES], ranked[MAX_MODEL_LINES:]
    if rest:
        shown.append((t.texts["others"].format(count=len(rest)), total_of(dict(rest))))
    lines = []
    for model, figures in shown:
        share = f"{figures.cost_usd / total:.1%}" if total else "-"
        lines.append((t.escape(model), f"{format_usd(figures.cost_usd)} ({share})"))
    return lines


@dataclass(slots=True)
class GatewayState:
    """What ``/status`` shows, gathered by the caller."""

    uptime_s: float
    upstreams: list[str]
    database_ok: bool
    queue_depth: int
    spool_depth: int
    cost_today_usd: Decimal | None


def render_status(
    state: GatewayState, language: Language = "en", *, as_html: bool = False
) -> str:
    t = Writer(language, as_html)
    cost = (
        format_usd(state.cost_today_usd)
        if state.cost_today_usd is not None
        else t("unknown")
    )
    lines = [
        t("status_title" if state.database_ok else "status_title_degraded"),
        "",
        f"{t('uptime')} {format_duration(state.uptime_s)}",
        f"{t('upstreams')} {t.escape(', '.join(state.upstreams))}",
        f"{t('database')} {t('database_ok' if state.database_ok else 'database_down')}",
        f"{t('queue')} {format_count(state.queue_depth)}",
        f"{t('spool')} {format_count(state.spool_depth)}",
        "",
        f"{t('cost_today')} {cost}",
    ]
    return "\n".join(lines)


def render_help(language: Language = "en", *, as_html: bool = False) -> str:
    return Writer(language, as_html)("help")


def render_unavailable(language: Language = "en", *, as_html: bool = False) -> str:
    return Writer(language, as_html)("unavailable")


def render_daily_summary(
    day: date, figures: Figures, language: Language = "en", *, as_html: bool = False
) -> str:
    t = Writer(language, as_html)
    avg_tokens = figures.avg_tokens_per_call
    lines = [t("summary_title", day=day.isoformat()), ""]
    lines += tree(
        [
            (t("cost"), format_usd(figures.cost_usd)),
            (t("tokens"), format_count(figures.tokens)),
            (t("calls"), format_count(figures.calls)),
            (
                t("avg_tokens"),
                format_count(avg_tokens) if avg_tokens is not None else "-",
            ),
            (t("latency"), format_ms(figures.avg_latency_ms, language)),
        ]
    )
    return "\n".join(lines)


def render_alert(
    limit: Limit,
    threshold: float,
    spent_usd: Decimal,
    window_start: datetime,
    enforced: bool,
    language: Language = "en",
    *,
    as_html: bool = False,
) -> str:
    t = Writer(language, as_html)
    title = t("alert_over" if threshold >= 1.0 else "alert_title")
    body = t(
        "alert_body",
        budget=limit.name,
        window=t.texts[f"window.{limit.window}"],
        start=window_start.date().isoformat(),
        percent=f"{threshold:.0%}",
        spent=format_usd(spent_usd),
        limit=format_usd(limit.limit_usd),
    )
    lines = [title, "", body]
    if enforced and threshold >= 1.0:
        lines.append(t("alert_enforced"))
    return "\n".join(lines)


# -- the command line ----------------------------------------------------------


def add_report_command(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``tallygate report`` through the command line's *command* helper."""
    parser = command("report", run_report, "print the token usage summary and exit")
    parser.add_argument(
        "--period",
        choices=PERIODS,
        default="today",
        help="span of the first block and the per-model lines (default today)",
    )


def run_report(args: argparse.Namespace, settings: Settings) -> int:
    """``tallygate report``: print the ``/tokens`` summary, read from the database."""

    async def read() -> TokensSummary:
        database = await db.open_database(settings.database, migrate=False)
        try:
            return await read_tokens_summary(database.pool, utc_now(), args.period)
        finally:
            await database.close()

    try:
        summary = asyncio.run(read())
    except (*db.UNREACHABLE, asyncpg.PostgresError, db.DatabaseRefused) as exc:
        # A terminal wants one line saying why, not a traceback.
        message = db.describe_error(exc)
        print(f"tallygate: cannot read the usage: {message}", file=sys.stderr)
        return 1
    print(render_tokens(summary, settings.telegram.language))
    return 0
