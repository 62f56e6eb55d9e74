"""One JSON line per request, buffered and flushed off the request path (every 100 ms at most)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, TYPE_CHECKING, Literal

from frontgate.config.schema import AccessLog as AccessLogConfig

if TYPE_CHECKING:
    from frontgate.server.exchange import Exchange

_FLUSH_EVERY = 0.1


class AccessLog:
    def __init__(self, stream: IO[str] | None, owns_stream: bool) -> None:
        self._stream = stream
        self._owns = owns_stream
        self._flush_scheduled = False
        self.enabled = stream is not None

    @classmethod
    def from_config(cls, config: AccessLogConfig | Literal[False]) -> AccessLog:
        if config is False:
            return cls(None, False)
        if config.to == "stdout":
            return cls(sys.stdout, False)
        if config.to == "stderr":
            return cls(sys.stderr, False)
        return cls(open(config.to, "a", encoding="utf-8"), True)

    def write(self, exchange: Exchange) -> None:
        ctx = exchange.ctx
        target = exchange.target_url
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "request_id": ctx.request_id,
            "client_ip": ctx.client_ip,
            "method": ctx.method,
            "host": ctx.host,
            "path": ctx.path,
            "route": exchange.route.name if exchange.route else None,
            "upstream": target,
            "consumer": ctx.consumer,
            "status": exchange.status,
            "bytes_in": exchange.body_bytes,
            "bytes_out": exchange.bytes_out,
            "duration_ms": round((time.monotonic() - ctx.started) * 1000, 3),
        }
        assert self._stream is not None
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(_FLUSH_EVERY, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.flush()
            if self._owns:
                self._stream.close()
