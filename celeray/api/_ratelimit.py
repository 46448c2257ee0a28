"""Per-client request rate limit, counted in Redis so it holds across gunicorn workers.

A sliding-window counter: each client has one counter per minute (``INCR`` + ``EXPIRE`` in
one Lua step, so two workers never both take the last slot), and a request is allowed while
this minute's count plus the previous minute's, weighted by how much of it still lies in
the last 60 s, stays under the limit. Counters expire after two windows, so Redis holds at
most two keys per active client. A client is the bearer token when it is valid (hashed: the
token never goes into Redis) or else the remote address, so wrong-token floods are limited
by address. When Redis cannot be asked the request passes: every route but health needs
Redis anyway and answers 503, and health must keep answering during an outage.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

import redis
from flask import request
from werkzeug.exceptions import TooManyRequests

from celeray.api._auth import given_token, has_valid_token
from celeray.api._connections import conns

__all__ = ["KEY_PREFIX", "WINDOW", "limit_rate", "retry_after"]

log = logging.getLogger(__name__)

WINDOW = 60  # seconds: the setting is requests per minute
KEY_PREFIX = "celeray:ratelimit"

# KEYS: this window's counter, the previous window's. ARGV: limit, elapsed ms, window ms.
# Returns {allowed 0/1, this window's count, the previous window's count}.
_TAKE = """
local limit = tonumber(ARGV[1])
local elapsed = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur + prev * (window - elapsed) / window + 1 > limit then
  return {0, cur, prev}
end
cur = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 2 * window)
return {1, cur, prev}
"""


def retry_after(cur: int, prev: int, elapsed: float, window: float, limit: int) -> int:
    """Whole seconds until one more request of a refused client fits under ``limit``.

    ``cur`` and ``prev`` are the counts of this window and the previous one, ``elapsed`` the
    seconds since this window began. At least 1.
    """
    if cur + 1 > limit:  # only the next window helps, once enough of this one has slid out
        wait = (window - elapsed) + window * max(0.0, 1 - (limit - 1) / cur)
    else:  # the previous window's weight shrinks as this one goes on
        wait = window * (1 - (limit - 1 - cur) / prev) - elapsed
    return max(1, math.ceil(wait))


def _client() -> str:
    token = given_token()
    if token is not None and has_valid_token():
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return f"addr:{request.remote_addr or 'unknown'}"


def limit_rate() -> None:
    """Refuse the request with 429 and ``Retry-After`` when its client is over the limit;
    a ``before_request`` hook, run before authentication."""
    c = conns()
    limit = c.settings.api_rate_limit
    if limit <= 0:
        return
    now = time.time()
    slot = int(now // WINDOW)
    elapsed = now - slot * WINDOW
    key = f"{KEY_PREFIX}:{_client()}"
    try:
        r = c.quick_redis(c.settings.effective_state_url)
        allowed, cur, prev = r.register_script(_TAKE)(
            keys=[f"{key}:{slot}", f"{key}:{slot - 1}"],
            args=[limit, int(elapsed * 1000), WINDOW * 1000],
        )
    except redis.RedisError as exc:
        log.warning("rate limit not checked, Redis unreachable: %s", type(exc).__name__)
        return
    if not allowed:
        wait = retry_after(int(cur), int(prev), elapsed, WINDOW, limit)
        raise TooManyRequests(
            f"over the rate limit of {limit} requests per minute (CELERAY_API_RATE_LIMIT); "
            f"retry in {wait}s",
            retry_after=wait,
        )
