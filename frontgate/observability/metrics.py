"""Request and upstream-attempt counters: plain Python numbers, touched once per request in `observe()`.

The hot path does a dict lookup on a tuple of values the request already has (route name, method, status,
upstream name) and a few `+=` on the series it finds; the first request of a combination works out its
bounded labels (method class, status class) once. Nothing is rendered until /metrics is scraped.

Labels are bounded by construction: routes and upstreams come from the config (requests no route matched
count under route "(none)", never under their path), methods are folded into the standard nine and
"OTHER", statuses into classes, targets are the configured URLs, gRPC statuses are the 17 codes' names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from frontgate.observability.families import LATENCY_BOUNDS, FamilySet, histogram_value
from frontgate.protocol.grpc_status import status_name

if TYPE_CHECKING:
    from frontgate.observability.batch import Record
    from frontgate.upstream.cluster import Target, TargetState, UpstreamCluster

NO_ROUTE: Final = "(none)"  # requests that matched no route (404 / 405): one label value, whatever their path
NO_UPSTREAM: Final = "(none)"  # answered without an upstream: local replies, auth and limit refusals, 404s
METHOD_CLASSES = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
_BOUNDS: Final = LATENCY_BOUNDS
_BUCKETS: Final = len(LATENCY_BOUNDS) + 1
# Requests are counted under a key of raw values; combinations beyond this many (say, a flood of odd
# methods or statuses) are still counted, only without the shortcut.
_MAX_SHORTCUTS = 20_000

# One upstream try as the exchange records it in `ctx.tries`: [cluster, target, started, ended, ok], times
# in monotonic seconds (a list, filled in when the try ends: cheaper than an object on every request).


def method_class(method: str) -> str:
    return method if method in METHOD_CLASSES else "OTHER"


def status_class(status: int) -> str:
    # 0: the client left (or the connection broke) before any status was sent.
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


def latency_bucket(seconds: float) -> int:
    """The histogram bucket of a duration: `bisect_left(LATENCY_BOUNDS, seconds)`, as a scan from the
    smallest bound, which most requests stop at within a few steps (compiled: float compares)."""
    bounds = _BOUNDS
    count = len(bounds)
    index = 0
    while index < count and seconds > bounds[index]:
        index += 1
    return index


# Counts that follow from the histogram are not kept apart: a series' count is the sum of its buckets (and
# an attempt series' ok count that sum less its errors), one addition fewer per request.


class RequestSeries:
    __slots__ = ("buckets", "bytes_in", "bytes_out", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.buckets = [0] * _BUCKETS
        self.bytes_in = 0
        self.bytes_out = 0


class AttemptSeries:
    __slots__ = ("buckets", "errors", "total")

    def __init__(self) -> None:
        self.errors = 0
        self.total = 0.0
        self.buckets = [0] * _BUCKETS


class RequestMetrics:
    """This worker's request and attempt counts since it started."""

    def __init__(self) -> None:
        # (route, method, status, upstream) as the request has them -> the series of their bounded labels
        self._shortcuts: dict[tuple[str, str, int, str], RequestSeries] = {}
        self._series: dict[tuple[str, str, str, str], RequestSeries] = {}
        # Keyed by the target's protection state: one per (upstream, url), kept across reloads.
        self._attempts: dict[TargetState, AttemptSeries] = {}
        self._target_labels: dict[TargetState, tuple[str, str]] = {}
        # (route, upstream, grpc-status code) -> responses; only gRPC responses are counted here
        self._grpc: dict[tuple[str, str, int], int] = {}

    def count(self, records: list[Record]) -> None:
        """Count a batch of finished requests (see frontgate/observability/batch.py for a record). With the
        access log on, its formatting loop counts instead (`AccessLog.write`): one pass over the batch."""
        shortcuts = self._shortcuts
        for record in records:
            now, status, tries, grpc_status = record.now, record.status, record.tries, record.grpc_status
            route_name = record.route or NO_ROUTE
            if tries:
                self.count_tries(tries, now)
                upstream: str = tries[-1][0].name
            else:
                upstream = NO_UPSTREAM
            key = (route_name, record.method, status, upstream)
            request = shortcuts.get(key)
            if request is None:
                request = self.request_series(route_name, record.method, status, upstream)
            elapsed = now - record.started
            request.total += elapsed
            request.buckets[latency_bucket(elapsed)] += 1
            if record.bytes_in:
                request.bytes_in += record.bytes_in
            request.bytes_out += record.bytes_out
            if grpc_status is not None:
                self.count_grpc(route_name, upstream, grpc_status)

    def count_tries(self, tries: list[list[Any]], now: float) -> None:
        attempts = self._attempts
        for cluster, target, started, ended, ok in tries:
            series = attempts.get(target.state)
            if series is None:
                series = self.attempt_series(cluster, target)
            elapsed = (ended or now) - started  # 0: the try was still open when the exchange ended
            if not ok:
                series.errors += 1
            series.total += elapsed
            series.buckets[latency_bucket(elapsed)] += 1

    def count_grpc(self, route_name: str, upstream: str, grpc_status: int) -> None:
        key = (route_name, upstream, grpc_status)
        self._grpc[key] = self._grpc.get(key, 0) + 1

    def request_series(self, route: str, method: str, status: int, upstream: str) -> RequestSeries:
        """The series a request of these raw values counts under (made on first use)."""
        key = (route, method, status, upstream)
        series = self._shortcuts.get(key)
        if series is not None:
            return series
        labels = (route, method_class(method), status_class(status), upstream)
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = RequestSeries()
        if len(self._shortcuts) < _MAX_SHORTCUTS:
            self._shortcuts[key] = series
        return series

    def attempt_series(self, cluster: UpstreamCluster, target: Target) -> AttemptSeries:
        series = self._attempts.get(target.state)
        if series is None:
            series = self._attempts[target.state] = AttemptSeries()
            self._target_labels[target.state] = (cluster.name, target.url)
        return series

    def collect(self, out: FamilySet) -> None:
        labels = ("route", "method", "status_class", "upstream")
        requests = out.family("frontgate_requests", "counter",
                              "Requests answered (or abandoned), by route, method class, status class and upstream.",
                              labels)
        durations = out.family("frontgate_request_duration_seconds", "histogram",
                               "Time from the request head to the end of the response.", labels,
                               bounds=LATENCY_BOUNDS)
        received = out.family("frontgate_request_body_bytes", "counter", "Request body bytes received, by route.",
                              ("route",))
        sent = out.family("frontgate_response_body_bytes", "counter", "Response body bytes sent, by route.",
                          ("route",))
        for key, series in self._series.items():
            requests.add(key, float(sum(series.buckets)))
            durations.add(key, histogram_value(series.buckets, series.total))
            received.add((key[0],), float(series.bytes_in))
            sent.add((key[0],), float(series.bytes_out))
        target_labels = ("upstream", "target")
        attempts = out.family("frontgate_upstream_attempts", "counter",
                              "Tries sent to an upstream target, by outcome (error: connect failure, reset, "
                              "timeout, broken response or 5xx).", (*target_labels, "outcome"))
        attempt_durations = out.family("frontgate_upstream_attempt_duration_seconds", "histogram",
                                       "Time of one try: connect (or pooled connection), request, whole response.",
                                       target_labels, bounds=LATENCY_BOUNDS)
        for state, attempt in self._attempts.items():
            upstream, url = self._target_labels[state]
            attempts.add((upstream, url, "ok"), float(sum(attempt.buckets) - attempt.errors))
            attempts.add((upstream, url, "error"), float(attempt.errors))
            attempt_durations.add((upstream, url), histogram_value(attempt.buckets, attempt.total))
        grpc = out.family("frontgate_grpc_responses", "counter",
                          "Responses of gRPC upstreams, by route, upstream and grpc-status (OK, NOT_FOUND, ...).",
                          ("route", "upstream", "grpc_status"))
        for (route, upstream, code), count in self._grpc.items():
            grpc.add((route, upstream, status_name(code)), float(count))
