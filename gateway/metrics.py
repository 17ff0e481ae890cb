"""
Every metric the gateway exports, declared once.

The hot path only adds to plain dicts (the event loop is one thread, so no
lock is needed); a custom collector turns them into Prometheus families when
``/metrics`` is scraped. Label sets stay small: no ticker, cycle or request
labels, and at most ``MAX_LABEL_VALUES`` upstreams, models or purposes before
the rest are counted as ``"other"`` (an ingested call may name any of them).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.record import UNTAGGED, UsageRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LABEL_VALUES = 200
OTHER = "other"

# Seconds. Fine at the bottom so sub-millisecond overhead is visible.
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


class Histogram:
    """Bucket counts and a sum, without locks."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class LabelLimiter:
    """Maps label values onto at most *limit* distinct ones."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        value = value or ""
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class Metrics(Collector):
    """The gateway's metrics; one instance per application, with its registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.upstreams = LabelLimiter()
        self.models = LabelLimiter()
        self.purposes = LabelLimiter()
        self.requests: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        self.tokens: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.cost_usd: defaultdict[tuple[str, str], Decimal] = defaultdict(Decimal)
        self.unpriced: defaultdict[str, int] = defaultdict(int)
        self.upstream_latency: dict[str, Histogram] = {}
        self.overhead: dict[str, Histogram] = {}
        self.first_byte: dict[str, Histogram] = {}
        self.rows_written = 0
        self.rows_spooled = 0
        self.rows_replayed = 0
        self.write_errors = 0
        self.rejected: defaultdict[str, int] = defaultdict(int)
        self.alerts_sent: defaultdict[str, int] = defaultdict(int)
        self.alert_failures: defaultdict[str, int] = defaultdict(int)
        self.budget_ratio: dict[tuple[str, str], float] = {}
        # Read at scrape time: name -> (help, callable returning a number).
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.registry.register(self)

    # -- updates from the request path -------------------------------------

    def count_call(self, record: UsageRecord) -> None:
        """Count one finished call: request, tokens and cost."""
        # Seen values are tested inline: a call of each limiter costs more.
        upstream = record.upstream
        if upstream not in self.upstreams.seen:
            upstream = self.upstreams(upstream)
        model = record.model
        if model not in self.models.seen:
            model = self.models(model)
        purpose = record.purpose or UNTAGGED
        if purpose not in self.purposes.seen:
            purpose = self.purposes(purpose)
        self.requests[
            (upstream, model, record.endpoint, status_class(record.status))
        ] += 1
        if record.input_tokens:
            self.tokens[("input", model, purpose)] += record.input_tokens
        if record.cached_input_tokens:
            self.tokens[("cached_input", model, purpose)] += record.cached_input_tokens
        if record.output_tokens:
            self.tokens[("output", model, purpose)] += record.output_tokens
        if record.reasoning_tokens:
            self.tokens[("reasoning", model, purpose)] += record.reasoning_tokens
        if record.total_cost_usd is not None:
            self.cost_usd[(model, purpose)] += record.total_cost_usd
        elif record.input_tokens or record.output_tokens:
            self.unpriced[model] += 1

    def observe_latency(
        self,
        upstream: str,
        upstream_s: float,
        overhead_s: float,
        first_byte_s: float | None = None,
    ) -> None:
        histogram = self.upstream_latency.get(upstream)
        if histogram is None:
            histogram = self.upstream_latency[upstream] = Histogram(LATENCY_BUCKETS)
            self.overhead[upstream] = Histogram(OVERHEAD_BUCKETS)
            self.first_byte[upstream] = Histogram(LATENCY_BUCKETS)
        histogram.observe(upstream_s)
        self.overhead[upstream].observe(overhead_s)
        if first_byte_s is not None:
            self.first_byte[upstream].observe(first_byte_s)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Export ``tallygate_<name>`` read from *read* at scrape time."""
        self.gauges[name] = (help_text, read)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- the collector ------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        yield from self._collect_calls()
        yield from self._collect_histograms()
        yield from self._collect_recorder()
        info = GaugeMetricFamily(
            "tallygate_build_info",
            "Version of the running gateway.",
            labels=["version"],
        )
        info.add_metric([__version__], 1)
        yield info

    def _collect_calls(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "tallygate_requests",
            "Proxied or ingested calls, by upstream, model, endpoint and status class.",
            labels=["upstream", "model", "endpoint", "status_class"],
        )
        for labels, value in self.requests.items():
            requests.add_metric(list(labels), value)
        yield requests
        for kind in ("input", "cached_input", "output", "reasoning"):
            family = CounterMetricFamily(
                f"tallygate_{kind}_tokens",
                f"{kind.replace('_', ' ').capitalize()} tokens, by model and purpose.",
                labels=["model", "purpose"],
            )
            for (k, model, purpose), value in self.tokens.items():
                if k == kind:
                    family.add_metric([model, purpose], value)
            yield family
        cost = CounterMetricFamily(
            "tallygate_cost_usd",
            "Cost of calls in US dollars, by model and purpose.",
            labels=["model", "purpose"],
        )
        for labels, value in self.cost_usd.items():
            cost.add_metric(list(labels), float(value))
        yield cost
        unpriced = CounterMetricFamily(
            "tallygate_unpriced_calls",
            "Calls with tokens whose model no price source knew.",
            labels=["model"],
        )
        for model, value in self.unpriced.items():
            unpriced.add_metric([model], value)
        yield unpriced
        rejected = CounterMetricFamily(
            "tallygate_rejected_requests",
            "Requests the gateway refused before any upstream saw them, by reason.",
            labels=["reason"],
        )
        for reason, value in self.rejected.items():
            rejected.add_metric([reason], value)
        yield rejected
        budget = GaugeMetricFamily(
            "tallygate_budget_spent_ratio",
            "Spent over limit for each budget and window (1 = at the limit).",
            labels=["budget", "window"],
        )
        for labels, value in self.budget_ratio.items():
            budget.add_metric(list(labels), value)
        yield budget
        for name, table, text in (
            ("tallygate_alerts_sent", self.alerts_sent, "Alerts delivered"),
            ("tallygate_alert_failures", self.alert_failures, "Alert sends failed"),
        ):
            family = CounterMetricFamily(
                name, f"{text}, by channel.", labels=["channel"]
            )
            for channel, value in table.items():
                family.add_metric([channel], value)
            yield family

    def _collect_histograms(self) -> Iterator[Metric]:
        for name, table, text in (
            (
                "tallygate_upstream_latency_seconds",
                self.upstream_latency,
                "Time from sending upstream to the end of its answer.",
            ),
            (
                "tallygate_gateway_overhead_seconds",
                self.overhead,
                "Time a call spent in the gateway itself, outside the upstream.",
            ),
            (
                "tallygate_time_to_first_byte_seconds",
                self.first_byte,
                "Time from sending upstream to the first byte of a stream.",
            ),
        ):
            family = HistogramMetricFamily(name, text, labels=["upstream"])
            for upstream, histogram in table.items():
                if name.endswith("first_byte_seconds") and not histogram.total:
                    continue
                family.add_metric([upstream], histogram.cumulative(), histogram.total)
            yield family

    def _collect_recorder(self) -> Iterator[Metric]:
        for name, value, text in (
            ("rows_written", self.rows_written, "Usage rows written to PostgreSQL."),
            ("rows_spooled", self.rows_spooled, "Usage rows written to the spool."),
            ("rows_replayed", self.rows_replayed, "Spooled rows replayed."),
            ("write_errors", self.write_errors, "Failed batch writes."),
        ):
            family = CounterMetricFamily(f"tallygate_recorder_{name}", text)
            family.add_metric([], value)
            yield family
        for name, (text, read) in self.gauges.items():
            family = GaugeMetricFamily(f"tallygate_{name}", text)
            family.add_metric([], float(read()))
            yield family
