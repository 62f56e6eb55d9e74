"""Per-process counts of refused credentials, keyed by (plugin, reason), for the metrics endpoint.

The reason of the refusal that answered a request is also put in `ctx.state["auth_failure"]`, for the
access log. Reasons are short fixed words chosen by the code ("expired", "bad_signature"), never anything
taken from the request, so the label set stays bounded.
"""

from __future__ import annotations

from collections import Counter

from frontgate.pipeline.context import RequestContext

FAILURES: Counter[tuple[str, str]] = Counter()


def record_failure(ctx: RequestContext, plugin: str, reason: str) -> None:
    FAILURES[(plugin, reason)] += 1
    if ctx.state is None:
        ctx.state = {}
    previous = ctx.state.get("auth_failure")
    entry = f"{plugin}:{reason}"
    ctx.state["auth_failure"] = entry if previous is None else f"{previous},{entry}"


def failure_counts() -> dict[tuple[str, str], int]:
    """A snapshot, for exporters and tests."""
    return dict(FAILURES)
