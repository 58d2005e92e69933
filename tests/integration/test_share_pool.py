"""Pools of processes through one share (TCPFIX_SHARE), on real programs in
namespaces the tests make:
  - incident 000's shape: a shell loop of fresh prober processes against a
    refusing port follows one backoff schedule with a share, and none
    without; the port opening again ends it for the next prober;
  - TCPFIX_CONNECT_RATE=50/s shared by 8 processes: 50/s in all over 10 s,
    each process a fair part; the processes' counts add up in the share;
  - 100 processes SIGKILLed at random moments while they connect through the
    share: the survivors keep the rate and the backoff, and `tcpfix top`
    still reads it and counts only the living.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from conftest import tcpfix_env
from helpers import read_stats, show
from share_env import (SynCounter, destination, finish, share_name,  # noqa: F401
                       start_acceptor, start_clients, top_json)

# -- incident 000's shape: a fresh process per probe --------------------------------------------------

def probe_loop(ns, env, program, port, count):
    """A shell loop of incident 000's prober, one process per probe; returns
    when each probe ended (seconds) and its summary ("ok=1,eaddrnotavail=0,other=0")."""
    script = (f'for i in $(seq {count}); do '
              f'echo "$({program("port_probe")} 127.0.0.1 {port} 1 | tail -n1 | tr " " ,) $(date +%s.%N)"; done')
    r = ns.run(["/bin/sh", "-c", script], env=env, timeout=60)
    assert r.returncode == 0, show(r)
    rows = [line.split() for line in r.stdout.strip().splitlines()]
    assert len(rows) == count and all(len(x) == 2 for x in rows), show(r)
    return [float(x[1]) for x in rows], [x[0] for x in rows], r


def test_shell_loop_of_probers_follows_one_backoff_with_a_share(make_netns, lib, program, share_name):
    ns = make_netns((20000, 60000))
    port = 7410
    syns = SynCounter.install(ns, port)
    count = 9
    # Without a share each prober starts with a clean slate: no wait at all.
    alone_t, alone_r, _ = probe_loop(ns, tcpfix_env(lib, reconnect_backoff="40ms:320ms"), program, port, count)
    assert alone_r == ["ok=0,eaddrnotavail=0,other=1"] * count, alone_r
    alone_gaps = [b - a for a, b in zip(alone_t, alone_t[1:])]
    assert syns.read() == count
    # With one: the loop's attempts follow the schedule 40, 80, 160, 320, 320 ... ms (x jitter [0.5, 1)).
    env = tcpfix_env(lib, reconnect_backoff="40ms:320ms", share=share_name)
    t, results, _ = probe_loop(ns, env, program, port, count)
    assert results == ["ok=0,eaddrnotavail=0,other=1"] * count, results
    gaps = [b - a for a, b in zip(t, t[1:])]
    print(json.dumps({"gaps_without_share_s": alone_gaps, "gaps_with_share_s": gaps}))
    # Without: the whole loop takes less than half the schedule's shortest span.
    assert sum(alone_gaps) < 0.5 * sum(0.5 * min(0.04 * 2 ** k, 0.32) for k in range(count - 1)), alone_gaps
    for k, gap in enumerate(gaps):
        delay = min(0.04 * 2 ** k, 0.32)
        assert 0.5 * delay - 0.02 <= gap <= delay + 0.15, (k, gaps)
    assert syns.read() == 2 * count  # one attempt per process either way: the share spaces them

    # The port opens: the next prober waits at most one delay, succeeds, and
    # the ones after it run unpaced.
    acceptor = start_acceptor(ns, port, lifetime_s=30)
    try:
        t2, results2, _ = probe_loop(ns, env, program, port, 6)
    finally:
        acceptor.kill()
    assert results2 == ["ok=1,eaddrnotavail=0,other=0"] * 6, results2
    gaps2 = [b - a for a, b in zip(t2, t2[1:])]
    assert all(g <= 0.1 for g in gaps2), gaps2
    top = top_json(ns, share_name)
    d = destination(top, f"127.0.0.1:{port}")
    assert d["consecutive_failures"] == 0 and d["backoff_delay_ms"] == 0, d
    assert d["connects"] == count + 6 and d["failures"] == count, d


# -- one rate for 8 processes ---------------------------------------------------------------------------

def test_connect_rate_is_one_budget_for_8_processes(make_netns, lib, program, share_name, stats_dir):
    ns = make_netns((20000, 60000))
    port = 7420
    acceptor = start_acceptor(ns, port, lifetime_s=60)
    try:
        # Without a share: each process has its own 50/s.
        alone = finish(start_clients(ns, program, tcpfix_env(lib, connect_rate="50/s"), port, 8, 3000))
        alone_rate = sum(c["ok"] for c in alone) / 3.0

        env = tcpfix_env(lib, connect_rate="50/s", share=share_name, stats=str(stats_dir / "c-%p.json"))
        clients = finish(start_clients(ns, program, env, port, 8, 12000))
    finally:
        acceptor.kill()
    # The 10 s from when the last process had started.
    t0 = max(c["start"] for c in clients) + 0.5
    t1 = t0 + 10
    per = [sum(1 for t in c["times"] if t0 <= t < t1) for c in clients]
    total = sum(per)
    fairness = max(per) / max(min(per), 1)
    print(json.dumps({"per_process_in_10s": per, "aggregate_per_s": total / 10, "fairness_max_over_min": fairness,
                      "without_share_per_s": alone_rate}))
    assert all(c["ok"] == c["attempts"] for c in clients), clients
    assert 450 <= total <= 550, per
    assert min(per) > 0 and fairness <= 1.5, per
    assert alone_rate >= 8 * 50 * 0.8, alone_rate

    # What the processes counted (TCPFIX_STATS) adds up to what the share counted.
    top = top_json(ns, share_name)
    d = destination(top, f"127.0.0.1:{port}")
    stats = [read_stats(f) for f in sorted(stats_dir.glob("c-*.json"))]
    assert len(stats) == 8
    assert d["connects"] == sum(s["destinations"][f"127.0.0.1:{port}"]["connects"] for s in stats)
    assert d["connects"] == sum(c["attempts"] for c in clients)
    assert d["failures"] == 0 and top["processes"] == 0, d
    assert abs(d["throttled_ms"] - sum(s["throttled_ms"] for s in stats)) <= 8 * len(clients) * 60, \
        (d["throttled_ms"], [s["throttled_ms"] for s in stats])


# -- SIGKILL -------------------------------------------------------------------------------------------

def test_processes_killed_at_random_moments_leave_the_share_right(make_netns, lib, program, share_name):
    """100 processes killed with SIGKILL at random moments while they wait
    for their rate slot or backoff turn, take them, or fail (50 toward a
    listener at a shared 100/s, 50 toward a refusing port with a shared
    backoff 50ms:400ms). Then the 6 that were never killed: together 100/s
    toward the listener (within 10 %), and toward the refusing port one
    backoff schedule — not stuck, not storming — and `tcpfix top` counts
    the 6 living processes only."""
    ns = make_netns((20000, 60000))
    open_port, closed_port = 7430, 7431
    acceptor = start_acceptor(ns, open_port, lifetime_s=90)
    syns = SynCounter.install(ns, closed_port)
    env = tcpfix_env(lib, share=share_name, connect_rate="100/s", reconnect_backoff="50ms:400ms", log="error")
    rng = random.Random(13)
    try:
        survivors = (start_clients(ns, program, env, open_port, 4, 16000) +
                     start_clients(ns, program, env, closed_port, 2, 16000))
        killed = 0
        for wave in range(10):
            victims = [ns.popen([program("share_client"), "-q", "-d", "5000", "127.0.0.1",
                                 str(open_port if i % 2 else closed_port)], env=env) for i in range(10)]
            t = time.monotonic()
            for p in sorted(victims, key=lambda _: rng.random()):
                time.sleep(max(0.0, t + rng.uniform(0.02, 0.4) - time.monotonic()))
                p.kill()
                p.wait(5)
                killed += 1
        assert killed == 100
        time.sleep(0.3)
        during = top_json(ns, share_name)
        t_window = time.monotonic()
        syn0 = syns.read()
        time.sleep(6)
        syn_window = syns.read() - syn0
        t_window_end = time.monotonic()
        live = top_json(ns, share_name)
        results = finish(survivors)
    finally:
        acceptor.kill()
    ok_times = [t for c in results[:4] for t in c["times"]]
    # CLOCK_MONOTONIC in the clients is the same clock as time.monotonic() here.
    in_window = [t for t in ok_times if t_window + 0.5 <= t < t_window + 5.5]
    rate = len(in_window) / 5.0
    print(json.dumps({"rate_after_kills_per_s": rate, "syns_to_refusing_port_in_6s": syn_window,
                      "processes_during": during["processes"], "processes_at_end": live["processes"],
                      "waiting": [d["waiting"] for d in live["destinations"]]}))
    assert 90 <= rate <= 110, rate
    # Steady state at MAX (400 ms x [0.5, 1)): 15 to 30 attempts in 6 s; none stuck.
    assert 6 / 0.4 * 0.8 <= syn_window <= 6 / 0.2 + 3, syn_window
    assert all(c["ok"] == c["attempts"] for c in results[:4]), [c["attempts"] for c in results]
    assert all(c["ok"] == 0 and c["refused"] == c["attempts"] for c in results[4:])
    assert live["processes"] == 6 and during["processes"] == 6, (during["pids"], live["pids"])
    assert sorted(live["pids"]) == sorted(c["pid"] for c in results)
    assert all(d["waiting"] <= 6 for d in live["destinations"]), live
    assert {d["destination"] for d in live["destinations"]} == {f"127.0.0.1:{open_port}",
                                                                f"127.0.0.1:{closed_port}"}
    assert t_window_end - t_window < 8


# -- leaks and reaps add up --------------------------------------------------------------------------

def test_leaks_and_reaps_of_several_processes_add_up_in_the_share(make_netns, lib, program, share_name,
                                                                 stats_dir):
    """Three incident-001 leak clients (connect, leave the greeting unread,
    never close) through one share with TCPFIX_REAP_CLOSE_WAIT and a shared
    backoff: the share counts every leak and every reaped socket of all
    three, exactly what their own stats files say, and ends at the backoff's
    MAX with the connects paced. (Each process storms for the first 250 ms,
    before any connection is old enough to be judged abandoned: with or
    without a share.)"""
    ns = make_netns((20000, 60000))
    port = 7470
    server = ns.popen([program("greeting_server"), "-a", "127.0.0.1", "-p", str(port), "-d", "100",
                       "-t", "20000"])
    assert server.stdout.readline().startswith("ready"), "greeting_server did not start"
    env = tcpfix_env(lib, share=share_name, reap_close_wait="200ms", reconnect_backoff="20ms:200ms",
                     stats=str(stats_dir / "leak-%p.json"), log="error")
    clients = [ns.popen([program("leak_client"), "127.0.0.1", str(port), "100000", "3000", "1000"], env=env)
               for _ in range(3)]
    for c in clients:
        out, err = c.communicate(timeout=30)
        assert c.returncode == 0, out + err
    server.terminate()
    server.wait(5)
    stats = [read_stats(f) for f in sorted(stats_dir.glob("leak-*.json"))]
    assert len(stats) == 3, [f.name for f in stats_dir.iterdir()]
    dest = f"127.0.0.1:{port}"
    mine = [s["destinations"][dest] for s in stats]
    d = destination(top_json(ns, share_name), dest)
    print(json.dumps({"share": d, "processes": mine}))
    assert d["connects"] == sum(m["connects"] for m in mine)
    assert d["leaks"] == sum(m["leaks"] for m in mine) and d["leaks"] > 0, (d, mine)
    assert d["reaped"] == sum(m["reaped"] for m in mine) and d["reaped"] > 0, (d, mine)
    assert d["failures"] == sum(m["failures"] for m in mine), (d, mine)
    assert d["consecutive_failures"] == d["failures"] and d["backoff_delay_ms"] == 200, d
    assert d["throttled_ms"] > 0 and d["throttled_ms"] == pytest.approx(
        sum(s["throttled_ms"] for s in stats), abs=3 * 50), (d, [s["throttled_ms"] for s in stats])
