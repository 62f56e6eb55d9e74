"""rate_limit: named rate limits (GCRA) and concurrency limits, checked together in one store round trip.

    store: {redis: "redis://127.0.0.1:6379/0", timeout: 20ms, on_failure: open}
    plugins:
      rate_limit:
        limits:
          - {name: per-ip, rate: 100/s, burst: 200, key: ip}
          - {name: writes, rate: 60/m, key: consumer, methods: [POST, PUT, DELETE], on_failure: closed}
        concurrency:
          - {name: uploads, max: 10, key: consumer}

A refused request gets 429 with `Retry-After`; every response of a request a rate limit applied to carries
`RateLimit-Policy` and `RateLimit` (IETF httpapi draft, structured fields). When the store cannot decide
within `store.timeout`, `on_failure` decides: `open` serves without the limit and without the headers,
`closed` answers 503 with `Retry-After` and never reaches the upstream. See docs/rate-limiting.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from frontgate.config.schema import Route
from frontgate.pipeline.context import HookResult, RequestContext, RequestHook, RequestSummary
from frontgate.plugins.base import BuildContext, Plugin
from frontgate.plugins.rate_limit_keys import KeyFunction, ip_key_prefix, key_function
from frontgate.plugins.rate_limit_model import (
    LimitItem,
    LimitStoreUnavailable,
    RateLimitConfig,
    RateLimited,
)
from frontgate.store import DecisionPlan, LimitStore, MemoryStore, RateRule, StoreUnavailable, Verdict, shared_store
from frontgate.store.base import MICROS, ceil_seconds

# --- metrics --------------------------------------------------------------------------------------------

OUTCOMES = ("admitted", "limited", "store_error")


class LimitCounters:
    """Decisions of one limit name in this process (limits of the same name share one); one attribute per
    outcome of `OUTCOMES`."""

    __slots__ = ("admitted", "limited", "store_error")

    def __init__(self) -> None:
        self.admitted = 0
        self.limited = 0
        self.store_error = 0


COUNTERS: dict[str, LimitCounters] = {}


def counters_for(name: str) -> LimitCounters:
    counters = COUNTERS.get(name)
    if counters is None:
        counters = COUNTERS[name] = LimitCounters()
    return counters


def decision_counts() -> dict[tuple[str, str], int]:
    """A snapshot keyed by (limit name, outcome), outcome one of admitted, limited, store_error; for the
    metrics exporter and tests."""
    out: dict[tuple[str, str], int] = {}
    for name, counters in COUNTERS.items():
        for outcome in OUTCOMES:
            out[(name, outcome)] = getattr(counters, outcome)
    return out


# --- compiled -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applicable:
    """Everything about the limits that apply to one method, decided at compile time."""

    plan: DecisionPlan
    keys: tuple[KeyFunction, ...]  # rate keys, then slot keys
    names: tuple[str, ...]
    closed: bool  # some limit fails closed
    policy: bytes  # the RateLimit-Policy value (empty without rate limits)
    policy_line: bytes  # the same as a header line
    items: tuple[bytes, ...]  # per rate limit: b'"name";r='
    counters: tuple[LimitCounters, ...]
    only_rule: RateRule | None  # the one rate limit, when it is all there is (no concurrency slots)


# What the access log needs to know of a request admitted on the fast path (see RateLimitPlugin.on_request).
_ADMITTED = Verdict(True, [], [], 0, 0)
_MADE_LINES = 1024  # header line pairs the lean hook keeps


def _sf_string(value: str) -> bytes:
    return b'"' + value.encode("ascii") + b'"'  # names are [A-Za-z0-9_.-]: nothing to escape


@mypyc_attr(native_class=False)  # a Plugin (interpreted) with class attributes; its methods are compiled
class RateLimitPlugin(Plugin):
    name = "rate_limit"
    priority = 900  # after the authenticators and `allow` (consumer and claims known), before rewrites
    Config = RateLimitConfig
    config: RateLimitConfig

    def __init__(self, config: RateLimitConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self.store: LimitStore = shared_store(build)
        self._memory = self.store if isinstance(self.store, MemoryStore) else None
        settings = build.gateway.store
        self._default_failure = settings.on_failure if settings is not None else "open"
        self._api_key_header = _api_key_header(route, build)
        methods = {m for item in [*config.limits, *config.concurrency] for m in item.methods}
        self._by_method = {m: self._compile(m) for m in sorted(methods)}
        self._other = self._compile(None)

    def _compile(self, method: str | None) -> Applicable | None:
        rates = [item for item in self.config.limits if _applies(item, method)]
        slots = [item for item in self.config.concurrency if _applies(item, method)]
        if not rates and not slots:
            return None
        items: list[LimitItem] = [*rates, *slots]
        names = tuple(item.name for item in items)
        policy = b", ".join(_sf_string(r.name) + b";q=%d;w=%d" % (r.rule.capacity, r.rule.period) for r in rates)
        return Applicable(
            plan=DecisionPlan(tuple(r.rule for r in rates), tuple(s.max for s in slots)),
            keys=tuple(key_function(i.name, i.key, self._api_key_header) for i in items),
            names=names,
            closed=any((i.on_failure or self._default_failure) == "closed" for i in items),
            policy=policy,
            policy_line=b"ratelimit-policy: " + policy + b"\r\n",
            items=tuple(_sf_string(r.name) + b";r=" for r in rates),
            counters=tuple(counters_for(n) for n in names),
            only_rule=rates[0].rule if len(rates) == 1 and not slots else None,
        )

    async def startup(self) -> None:
        await self.store.start()

    async def shutdown(self) -> None:
        await self.store.close()

    def request_hook(self) -> RequestHook:
        applicable = self._other
        if self._by_method or self._memory is None or applicable is None or applicable.only_rule is None:
            return self.on_request
        limit = self.config.limits[0]  # the only one (only_rule), and it applies to every method
        ip_prefix = ip_key_prefix(limit.name) if limit.key == "ip" else None
        return _in_memory_hook(applicable, applicable.only_rule, self._memory, ip_prefix, self.on_request)

    def on_request(self, ctx: RequestContext) -> HookResult:
        applicable = self._by_method.get(ctx.method, self._other) if self._by_method else self._other
        if applicable is None:
            return None
        keys = [key(ctx) for key in applicable.keys]
        if self._memory is None:
            return self._decide_remotely(ctx, applicable, keys)
        # The in-process store answers at once: no coroutine at all.
        self._admit(ctx, applicable, keys, self._memory.decide_now(applicable.plan, keys))
        return None

    async def _decide_remotely(self, ctx: RequestContext, applicable: Applicable, keys: list[bytes]) -> None:
        try:
            verdict = await self.store.decide(applicable.plan, keys)
        except StoreUnavailable:
            for counters in applicable.counters:
                counters.store_error += 1
            if applicable.closed:
                raise LimitStoreUnavailable(headers=[(b"retry-after", b"1")]) from None
            return
        self._admit(ctx, applicable, keys, verdict)

    def _admit(self, ctx: RequestContext, applicable: Applicable, keys: list[bytes], verdict: Verdict) -> None:
        """Apply the store's verdict: the RateLimit fields, the counters, and a 429 when a limit is spent."""
        ctx.rate_limit = (applicable, verdict)
        if applicable.policy:  # on every response to a limited request, 2xx and 429 alike
            ctx.response_lines_add = [applicable.policy_line,
                                      b"ratelimit: " + ratelimit_value(applicable, verdict) + b"\r\n"]
        if verdict.allowed:
            for counters in applicable.counters:
                counters.admitted += 1
            if verdict.token is not None:
                if ctx.state is None:
                    ctx.state = {}
                ctx.state["rate_limit_slots"] = (applicable.plan, keys, verdict.token)
            return
        for index, counters in enumerate(applicable.counters):
            if verdict.denied >> index & 1:
                counters.limited += 1
        retry = max(1, ceil_seconds(verdict.retry_after_us))
        raise RateLimited(headers=[(b"retry-after", b"%d" % retry)])

    def uses(self, hook: str) -> bool:
        if hook == "on_log":
            return bool(self.config.concurrency)  # only concurrency slots need releasing at the end
        return super().uses(hook)

    def on_log(self, ctx: RequestContext, summary: RequestSummary) -> None:
        state = ctx.state
        if state:
            held = state.pop("rate_limit_slots", None)
            if held is not None:
                plan, keys, token = held
                self.store.release(plan, keys, token)


def _in_memory_hook(applicable: Applicable, rule: RateRule, memory: MemoryStore, ip_prefix: bytes | None,
                    full_check: RequestHook) -> RequestHook:
    """The common case compiled lean: one limit for every method, in the in-process store, its key built
    inline when it is the client address. A request it would refuse goes through `full_check` (the plugin's
    `on_request`: nothing was consumed), which says why. (A function, not a method: the compiled build
    (setup.py) cannot make closures in the methods of the plugin's interpreted-style class.)"""
    key = applicable.keys[0]
    counters = applicable.counters[0]
    admit = memory.admitter(rule)
    interval, tolerance = rule.interval_us, rule.tolerance_us
    policy_line = applicable.policy_line
    field = b"ratelimit: " + applicable.items[0] + b"%d;t=%d\r\n"
    admitted = (applicable, _ADMITTED)
    # (remaining, seconds to reset) -> [policy line, RateLimit line]: few pairs repeat, and a lookup costs
    # less than formatting two numbers.
    made: dict[tuple[int, int], list[bytes]] = {}

    def rate_limit_in_memory(ctx: RequestContext) -> HookResult:
        reset_us = admit(key(ctx) if ip_prefix is None else ip_prefix + ctx.client_ip.encode())
        if not reset_us:
            return full_check(ctx)
        counters.admitted += 1
        ctx.rate_limit = admitted
        values = ((tolerance - reset_us) // interval, -(-reset_us // MICROS))
        lines = made.get(values)
        if lines is None:
            if len(made) >= _MADE_LINES:
                made.clear()
            lines = made[values] = [policy_line, field % values]
        ctx.response_lines_add = lines
        return None

    return rate_limit_in_memory


def _applies(item: LimitItem, method: str | None) -> bool:
    """Whether a limit applies to requests of `method` (None: a method no limit names)."""
    return not item.methods or (method is not None and method in item.methods)


def ratelimit_value(applicable: Applicable, verdict: Verdict) -> bytes:
    items = applicable.items
    if len(items) == 1:
        return items[0] + b"%d;t=%d" % (verdict.remaining[0], -(-verdict.reset_us[0] // MICROS))
    return b", ".join([
        item + b"%d;t=%d" % (remaining, ceil_seconds(reset))
        for item, remaining, reset in zip(items, verdict.remaining, verdict.reset_us, strict=False)
    ])


def _api_key_header(route: Route | None, build: BuildContext) -> bytes:
    """The header the api_key plugin of this route (or the global one) reads, else X-Api-Key."""
    for section in ((route.plugins if route else {}), build.gateway.plugins):
        settings = section.get("api_key")
        if isinstance(settings, dict) and isinstance(settings.get("header"), str):
            return str(settings["header"]).lower().encode("latin-1")
    return b"x-api-key"
