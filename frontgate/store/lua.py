"""The Redis scripts. Each runs atomically on the server, so any number of gateways share one exact count.

The server's own clock (`TIME`) is the only clock, so gateways with skewed clocks still agree. Timestamps
are integer microseconds; Lua numbers are doubles, exact up to 2^53 (far beyond any microsecond epoch), and
are written back with `%.0f` because `tostring` would round them to 14 digits.
"""

from __future__ import annotations

import hashlib

# KEYS: n rate keys, then m slot keys.
# ARGV: n, m, lease_ms, interval_us and tolerance_us per rate key, max per slot key, and last the token.
# Returns {allowed, retry_us, denied_bits, remaining_1, reset_us_1, ..., remaining_n, reset_us_n}.
DECIDE = b"""
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local denied = 0
local retry = 0
local out = {0, 0, 0}
local fresh = {}
local bit = 1
for i = 1, n do
  local interval = tonumber(ARGV[2 + 2 * i])
  local tolerance = tonumber(ARGV[3 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - tolerance
  if allow_at > now then
    denied = denied + bit
    if allow_at - now > retry then retry = allow_at - now end
    out[2 + 2 * i] = 0
    out[3 + 2 * i] = tat - now
  else
    out[2 + 2 * i] = math.floor((now - allow_at) / interval)
    out[3 + 2 * i] = new_tat - now
    fresh[i] = new_tat
  end
  bit = bit * 2
end
local now_ms = math.floor(now / 1000)
for j = 1, m do
  local key = KEYS[n + j]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  if redis.call('ZCARD', key) >= tonumber(ARGV[3 + 2 * n + j]) then
    denied = denied + bit
  end
  bit = bit * 2
end
if denied == 0 then
  for i = 1, n do
    local ttl = math.floor((fresh[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', fresh[i]), 'PX', ttl)
  end
  local lease = tonumber(ARGV[3])
  local token = ARGV[4 + 2 * n + m]
  for j = 1, m do
    redis.call('ZADD', KEYS[n + j], now_ms + lease, token)
    redis.call('PEXPIRE', KEYS[n + j], lease)
  end
else
  for i = 1, n do
    if fresh[i] then
      out[2 + 2 * i] = out[2 + 2 * i] + 1
      out[3 + 2 * i] = math.max(0, out[3 + 2 * i] - tonumber(ARGV[2 + 2 * i]))
    end
  end
end
out[1] = denied == 0 and 1 or 0
out[2] = retry
out[3] = denied
return out
"""

# KEYS: slot keys; ARGV: lease_ms, then the token held in each key. Extends leases still held.
RENEW = b"""
local t = redis.call('TIME')
local until_ms = math.floor((tonumber(t[1]) * 1000000 + tonumber(t[2])) / 1000) + tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', until_ms, ARGV[1 + i])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]))
end
return #KEYS
"""


def sha1_hex(script: bytes) -> bytes:
    return hashlib.sha1(script).hexdigest().encode()


DECIDE_SHA = sha1_hex(DECIDE)
RENEW_SHA = sha1_hex(RENEW)
SCRIPTS = {DECIDE_SHA: DECIDE, RENEW_SHA: RENEW}
