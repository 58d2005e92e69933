"""Incident 003's client as a pool, incident 001's outage: PHP-FPM with 16
workers (pm = static) and php-redis, each request a short connection to
redis, asked by cgi-fcgi from 24 concurrent load loops. Redis is stopped for
DOWN seconds and started again; an nftables counter counts the SYNs to the
redis port while it is down.

Three arms, each in a namespace of its own, the same load:
  - no tcpfix: every request tries, so the SYNs follow the request rate;
  - TCPFIX_RECONNECT_BACKOFF per process: each of the 16 workers backs off on
    its own schedule, so the pool makes the sum of 16 schedules;
  - the same with TCPFIX_SHARE: one schedule for the pool — a failure seen by
    one worker delays every other, and the first connection that carries data
    after redis returns wakes them all.
"""

from __future__ import annotations

import json
import time

from conftest import tcpfix_env
from share_env import FpmPool, LoadGen, RedisServer, SynCounter, schedule_attempts, share_name, top_json  # noqa: F401

REDIS_PORT = 6379
WORKERS = 16
CONCURRENCY = 24
WARM, DOWN, UP = 2.0, 6.0, 3.0
MIN_S, MAX_S = 0.02, 1.0
BACKOFF = f"{int(MIN_S * 1000)}ms:{int(MAX_S * 1000)}ms"


def run_arm(make_netns, tmp_path, name: str, env: dict[str, str] | None, share: str | None = None) -> dict:
    ns = make_netns((20000, 60000))
    redis = RedisServer(ns, REDIS_PORT, tmp_path / name / "redis")
    redis.start()
    syns = SynCounter.install(ns, REDIS_PORT)
    pool = FpmPool(ns, tmp_path / name / "fpm", env or {}, workers=WORKERS, redis_port=REDIS_PORT)
    load = LoadGen(pool, concurrency=CONCURRENCY)
    figures: dict = {"arm": name}
    try:
        time.sleep(WARM)
        t_warm_end = time.monotonic()
        # The window starts once redis has exited (its listener is gone):
        # while it shuts down it still completes handshakes, which are not
        # failures of a connect.
        redis.stop()
        before = syns.read()
        t_stop = time.monotonic()
        time.sleep(DOWN)
        if share:
            figures["top_while_down"] = top_json(ns, share)
        down = syns.read() - before
        t_down_end = time.monotonic()
        redis.start()
        t_up = time.monotonic()
        time.sleep(UP)
    finally:
        load.stop()
        pool.stop()
        redis.stop()
    first_ok = load.first("ok", t_up)
    last_bad = max([t for t in (load.last("error", t_up), load.last("fail", t_up)) if t is not None],
                   default=None)
    figures.update({
        "syns_while_down": down,
        "down_s": round(t_down_end - t_stop, 2),
        "restart_s": round(t_up - t_down_end, 2),
        "requests_warm": load.between(t_warm_end - WARM, t_warm_end),
        "requests_down": load.between(t_stop, t_down_end),
        "requests_up": load.between(t_up, t_up + UP),
        "first_ok_after_restart_s": None if first_ok is None else round(first_ok - t_up, 3),
        "last_failure_after_restart_s": None if last_bad is None else round(last_bad - t_up, 3),
    })
    print(json.dumps(figures))
    return figures


def test_php_fpm_pool_backs_off_as_one_through_a_share(make_netns, tmp_path, lib, share_name):
    none = run_arm(make_netns, tmp_path, "no-tcpfix", None)
    alone = run_arm(make_netns, tmp_path, "per-process", tcpfix_env(lib, reconnect_backoff=BACKOFF))
    shared = run_arm(make_netns, tmp_path, "shared", tcpfix_env(lib, reconnect_backoff=BACKOFF, share=share_name),
                     share=share_name)
    detail = json.dumps({"no-tcpfix": none, "per-process": alone, "shared": shared}, indent=1)

    for arm in (none, alone, shared):
        assert arm["requests_warm"]["ok"] > 20, f"the pool did not serve before the outage\n{detail}"
        assert arm["requests_up"]["ok"] > 20, f"the pool did not serve after the outage\n{detail}"

    # One schedule for the pool: the attempts one process makes with every
    # delay at the shortest jitter (0.5), plus the workers whose connect was
    # already on its way when the first failure was seen (at most one each),
    # plus 2 for the boundaries of the window.
    one = schedule_attempts(shared["down_s"], MIN_S, MAX_S, 0.5)
    bound = one + WORKERS + 2
    assert shared["syns_while_down"] <= bound, f"shared: {shared['syns_while_down']} SYNs > {bound}\n{detail}"
    # Per process: 16 schedules. Each worker is busy the whole time (24 loops
    # for 16 workers), so it makes at least its own fewest-attempts schedule.
    fewest = schedule_attempts(alone["down_s"], MIN_S, MAX_S, 1.0)
    assert alone["syns_while_down"] >= WORKERS * fewest * 0.8, detail
    assert alone["syns_while_down"] >= 3 * shared["syns_while_down"], detail
    assert none["syns_while_down"] >= alone["syns_while_down"], detail

    # The share saw it: 16 workers attached, the destination failing.
    top = shared["top_while_down"]
    assert top["processes"] == WORKERS, detail
    dest = [d for d in top["destinations"] if d["destination"] == f"127.0.0.1:{REDIS_PORT}"]
    assert dest and dest[0]["consecutive_failures"] > 0 and dest[0]["backoff_delay_ms"] > 0, detail

    # Recovery within one backoff step: the first connect after redis is back
    # comes at most one delay (MAX) later, and its success wakes every worker.
    for arm in (alone, shared):
        assert arm["first_ok_after_restart_s"] is not None, detail
        assert arm["first_ok_after_restart_s"] <= MAX_S + 0.5, detail
    last = shared["last_failure_after_restart_s"]
    assert last is None or last <= MAX_S + 0.5, detail
