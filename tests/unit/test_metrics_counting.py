"""With the access log on, its formatting loop counts the metrics too (one pass over a batch). Both ways of
counting must give the same numbers, whatever the mix of routes, tries, retries, statuses and gRPC."""

from __future__ import annotations

import json
import time
from pathlib import Path

from frontgate.config.schema import Upstream
from frontgate.observability.access_log import AccessLog
from frontgate.observability.batch import Record
from frontgate.observability.families import FamilySet, render_prometheus
from frontgate.observability.metrics import RequestMetrics
from frontgate.upstream.cluster import UpstreamCluster, UpstreamRegistry


def _records() -> list[Record]:
    config = Upstream.model_validate({"targets": ["http://127.0.0.1:1", "http://127.0.0.1:2"]})
    cluster = UpstreamCluster("orders-svc", config, UpstreamRegistry(time.monotonic), None)
    first, second = cluster.targets
    records: list[Record] = []
    for i in range(40):
        now = 100.0 + i
        if i % 5 == 0:  # a retry: the first try failed
            tries = [[cluster, first, now - 0.5, now - 0.3, False], [cluster, second, now - 0.2, now - 0.01, True]]
        elif i % 7 == 0:  # a try still open when the exchange ended (the client left)
            tries = [[cluster, second, now - 0.05, 0.0, False]]
        elif i % 11 == 0:  # answered without an upstream
            tries = []
        else:
            tries = [[cluster, first if i % 2 else second, now - 0.004 * (i % 4), now - 0.001, True]]
        route = None if i % 13 == 0 else ("broken" if i % 3 == 0 else "orders")
        status = 404 if route is None else (503 if i % 3 == 0 else 200)
        grpc = 14 if i % 9 == 0 else None
        records.append(Record(now, now - 0.01 * (i % 6) - 0.002, route, "GET" if i % 4 else "POST", status, tries,
                        i % 3 * 100, 1000 + i, grpc, None, None, "127.0.0.1", None, "example.com",
                        f"/orders/{i}", None, None))
    return records


def _exposition(metrics: RequestMetrics) -> str:
    out = FamilySet()
    metrics.collect(out)
    return render_prometheus(out).decode()


def test_the_access_log_loop_counts_what_the_metrics_loop_counts(tmp_path: Path) -> None:
    records = _records()
    alone = RequestMetrics()
    alone.count(records[:25])
    alone.count(records[25:])
    with_log = RequestMetrics()
    log = AccessLog(str(tmp_path / "access.log"), None)
    log.write(records[:25], with_log)
    log.write(records[25:], with_log)
    assert log.wait_written(5)
    log.close()
    assert _exposition(with_log) == _exposition(alone)
    text = _exposition(alone)
    assert 'grpc_status="UNAVAILABLE"' in text and 'outcome="error"' in text and 'route="(none)"' in text
    lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert [line["path"] for line in lines] == [record.path for record in records]


def test_metrics_turned_on_later_do_not_count_into_the_old_series(tmp_path: Path) -> None:
    records = _records()
    log = AccessLog(str(tmp_path / "access.log"), None)
    first, second = RequestMetrics(), RequestMetrics()
    log.write(records, first)
    log.write(records, None)  # metrics off: nothing counted anywhere
    log.write(records, second)
    log.close()
    expected = RequestMetrics()
    expected.count(records)
    assert _exposition(first) == _exposition(second) == _exposition(expected)
