"""Metric families as plain data: what a worker snapshots, what worker 0 adds up, what /metrics renders.

A `Family` is one metric: its kind, help text, label names and samples keyed by label values. Counters and
gauges hold a number per sample; histograms hold `[count per bucket..., count above the last bound, sum]`
(not cumulative, so adding two workers' histograms is adding lists). `agg` says how the samples of several
workers combine: `sum` for counts, `max` / `min` for states every worker knows on its own (a breaker open in
any worker, a target healthy in all of them).

Rendering goes through prometheus_client's own exposition, only when /metrics is scraped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["counter", "gauge", "histogram"]
Aggregation = Literal["sum", "max", "min"]
Labels = tuple[str, ...]
Value = float | list[float]

# Latency buckets (seconds) for requests and upstream attempts: a gateway's own work is well under a
# millisecond, its upstreams' tails reach seconds; 15 bounds keep a histogram series small.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


@dataclass(slots=True)
class Family:
    name: str
    kind: Kind
    help: str
    labels: Labels
    agg: Aggregation = "sum"
    samples: dict[Labels, Value] = field(default_factory=dict)
    bounds: tuple[float, ...] = ()

    def add(self, labels: Labels, value: Value) -> None:
        """Combine one sample into this family by its aggregation."""
        current = self.samples.get(labels)
        if current is None:
            self.samples[labels] = list(value) if isinstance(value, list) else value
        elif isinstance(current, list):
            assert isinstance(value, list)
            for index, item in enumerate(value):
                current[index] += item
        else:
            assert not isinstance(value, list)
            if self.agg == "max":
                self.samples[labels] = max(current, value)
            elif self.agg == "min":
                self.samples[labels] = min(current, value)
            else:
                self.samples[labels] = current + value


class FamilySet:
    """Families by name; `merge` adds another set (another worker's) into this one."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def family(self, name: str, kind: Kind, help: str, labels: Labels = (), agg: Aggregation = "sum",
               bounds: tuple[float, ...] = ()) -> Family:
        existing = self.families.get(name)
        if existing is None:
            existing = self.families[name] = Family(name, kind, help, labels, agg, {}, bounds)
        return existing

    def merge(self, other: FamilySet, counters_only: bool = False) -> None:
        for name, theirs in other.families.items():
            if counters_only and theirs.kind == "gauge":
                continue
            mine = self.family(name, theirs.kind, theirs.help, theirs.labels, theirs.agg, theirs.bounds)
            for labels, value in theirs.samples.items():
                mine.add(labels, value)

    def __iter__(self) -> Iterator[Family]:
        return iter(self.families.values())

    def get(self, name: str) -> Family | None:
        return self.families.get(name)

    # --- to and from a worker's snapshot file ---------------------------------------------------------

    def to_json(self) -> bytes:
        data = [
            {"name": f.name, "kind": f.kind, "help": f.help, "labels": list(f.labels), "agg": f.agg,
             "bounds": list(f.bounds), "samples": [[list(k), v] for k, v in f.samples.items()]}
            for f in self.families.values()
        ]
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> FamilySet:
        out = cls()
        for item in json.loads(raw):
            family = out.family(item["name"], item["kind"], item["help"], tuple(item["labels"]), item["agg"],
                                tuple(item["bounds"]))
            for labels, value in item["samples"]:
                family.add(tuple(labels), value)
        return out


def histogram_value(buckets: Iterable[int], total: float) -> list[float]:
    return [float(b) for b in buckets] + [total]


def render_prometheus(families: FamilySet) -> bytes:
    """The Prometheus text format (0.0.4), written by prometheus_client from our families."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )

    def collect() -> Iterator[Metric]:
        for family in families:
            labels = list(family.labels)
            if family.kind == "histogram":
                histogram = HistogramMetricFamily(family.name, family.help, labels=labels)
                for values, sample in sorted(family.samples.items()):
                    assert isinstance(sample, list)
                    histogram.add_metric(list(values), _cumulative(family.bounds, sample), sample[-1])
                yield histogram
                continue
            metric: CounterMetricFamily | GaugeMetricFamily
            if family.kind == "counter":
                metric = CounterMetricFamily(family.name, family.help, labels=labels)
            else:
                metric = GaugeMetricFamily(family.name, family.help, labels=labels)
            for values, number in sorted(family.samples.items()):
                assert not isinstance(number, list)
                metric.add_metric(list(values), number)
            yield metric

    class _Collector:
        def collect(self) -> Iterator[Metric]:
            return collect()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)


def _cumulative(bounds: tuple[float, ...], sample: list[float]) -> list[tuple[str, float]]:
    running = 0.0
    out: list[tuple[str, float]] = []
    for bound, count in zip(bounds, sample, strict=False):
        running += count
        out.append((_le(bound), running))
    running += sample[len(bounds)]
    out.append(("+Inf", running))
    return out


def _le(bound: float) -> str:
    return repr(float(bound))


def quantile(bounds: tuple[float, ...], counts: list[float], q: float) -> float | None:
    """Like PromQL's histogram_quantile: linear interpolation inside the bucket holding the rank."""
    total = sum(counts[: len(bounds) + 1])
    if total <= 0:
        return None
    rank = q * total
    running = 0.0
    lower = 0.0
    for index, bound in enumerate(bounds):
        count = counts[index]
        if running + count >= rank and count > 0:
            return lower + (bound - lower) * (rank - running) / count
        running += count
        lower = bound
    return bounds[-1] if bounds else None


def group(family: Family | None, by: str, where: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Sum a family's samples by one label (keeping those whose `where` labels match): {label value: number
    or histogram list}."""
    out: dict[str, Any] = {}
    if family is None:
        return out
    index = family.labels.index(by)
    checks = [(family.labels.index(name), wanted) for name, wanted in (where or {}).items()]
    for labels, value in family.samples.items():
        if any(labels[i] != wanted for i, wanted in checks):
            continue
        key = labels[index]
        current = out.get(key)
        if current is None:
            out[key] = list(value) if isinstance(value, list) else value
        elif isinstance(current, list):
            assert isinstance(value, list)
            out[key] = [a + b for a, b in zip(current, value, strict=True)]
        else:
            out[key] = current + value
    return out
