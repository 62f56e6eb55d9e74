"""What the rate_limit plugin's users write and what its refused clients get: the plugin's config models
and its errors. Apart from frontgate/plugins/rate_limit.py because that module is compiled (setup.py), and
mypyc compiles neither pydantic models nor subclasses of interpreted classes."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from frontgate.config.schema import Methods
from frontgate.errors import HttpError
from frontgate.plugins.base import PluginConfig
from frontgate.plugins.rate_limit_keys import check_key
from frontgate.store import RateRule

# --- errors ---------------------------------------------------------------------------------------------


class RateLimited(HttpError):
    status, code, message = 429, "rate_limited", "Too many requests; retry after the time in Retry-After."


class LimitStoreUnavailable(HttpError):
    status, code, message = 503, "rate_limit_unavailable", "The rate limit could not be checked; retry shortly."


# --- config ---------------------------------------------------------------------------------------------

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h|d)\s*$")
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class LimitItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Names the counter (shared by limits of the same name) and the header item.")
    key: str = Field("ip", description="ip, consumer, api_key, route, global, header:<name> or claim:<name>.")
    methods: Methods = Field(default_factory=list, description="Only these methods; every method when empty.")
    on_failure: Literal["open", "closed"] | None = Field(None, description="Overrides store.on_failure.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"invalid limit name {value!r}: use 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        return check_key(value)



class RateLimitSpec(LimitItem):
    rate: str = Field(description="N/s, N/m, N/h or N/d: the sustained rate.")
    burst: int = Field(0, ge=0, description="Extra requests allowed at once on top of N.")

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        match = _RATE.match(str(value))
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"invalid rate {value!r}: expected N/s, N/m, N/h or N/d with N >= 1, e.g. 100/s")
        return value

    @property
    def rule(self) -> RateRule:
        match = _RATE.match(self.rate)
        assert match is not None
        return RateRule.of(int(match.group(1)), _PERIODS[match.group(2)], self.burst)


class ConcurrencySpec(LimitItem):
    max: int = Field(gt=0, description="Requests of one key in flight at once; 429 beyond.")


class RateLimitConfig(PluginConfig):
    limits: list[RateLimitSpec] = Field(default_factory=list)
    concurrency: list[ConcurrencySpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> RateLimitConfig:
        names = [item.name for item in [*self.limits, *self.concurrency]]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"limit names must be unique within rate_limit: {', '.join(duplicates)}")
        return self
