"""`tcpfix attach --reap-close-wait D`: incident 001's leak contained for a
static Go client that reconnects in a loop and never closes what it dialed.

The server greets and closes each connection 50 ms after accepting it; the
client never reads and never closes, so every connection it made sits in
CLOSE_WAIT holding its port. Without attach the 200-port range is gone
after 200 connects and the rest fail with EADDRNOTAVAIL. Attached, each
leaked socket is destroyed D after it entered CLOSE_WAIT: the ports held
stay near rate x (50 ms + D), every connect succeeds, and every leak is
logged once with the process and the destination.
"""

from __future__ import annotations

import json
import re
import threading
import time

from attach_env import Attach, bpf_attached, go_run, popen_in, last_json, sockets, start_server

RANGE = (40000, 40199)
DURATION_MS = 4000
INTERVAL_MS = 5
REAP_MS = 200


class CloseWaitSampler:
    """Counts CLOSE_WAIT sockets to a port every 100 ms on a thread."""

    def __init__(self, ns, port: int):
        self.ns, self.port = ns, port
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(len(sockets(self.ns, "close-wait", f"( dport = :{self.port} )")))
            self._stop.wait(0.1)

    def stop(self) -> list[int]:
        self._stop.set()
        self._t.join(5)
        return self.samples


def leak_argv(go_client: str, port: int, duration_ms: int, linger_ms: int) -> list[str]:
    return [go_client, "leak", "127.0.0.1", str(port), str(duration_ms), str(INTERVAL_MS),
            str(linger_ms)]


def test_go_leaker_baseline_runs_out_of_ports(make_netns, program, go_client):
    ns = make_netns(RANGE)
    start_server(ns, program, 5000, greeting="hello\n", close_after_ms=50)
    # The full duration: on a loaded machine each failing dial scans the
    # whole range (and Go's dialer tries again), so half of it made only
    # 92 failures in one CI run.
    r = go_run(ns, go_client, "leak", "127.0.0.1", "5000", str(DURATION_MS),
               str(INTERVAL_MS), "0")
    assert ns.range_size - 5 <= r["ok"] <= ns.range_size, r
    assert r["eaddrnotavail"] >= 100, r
    assert set(r["errors"]) == {"EADDRNOTAVAIL"}, r


def test_attach_reaps_the_go_leakers_close_wait_and_logs_each_leak(
        make_netns, make_cgroup, program, go_client, attach_cli, stats_dir):
    ns = make_netns(RANGE)
    cg = make_cgroup()
    start_server(ns, program, 5000, greeting="hello\n", close_after_ms=50)
    stats = stats_dir / "leak.json"
    daemon = Attach(ns, attach_cli, ["--cgroup", str(cg.path), "--reap-close-wait",
                                     f"{REAP_MS}ms", "--match", ":5000", "--stats", str(stats)])
    # A leaker outside the cgroup, to the same destination: its sockets stay.
    outsider = popen_in(ns, leak_argv(go_client, 5000, 300, 2 * DURATION_MS))
    time.sleep(0.6)
    sampler = CloseWaitSampler(ns, 5000)
    # Stays a second after its loop, holding everything, so that every leak
    # is due (and reaped) before it exits.
    leaker = popen_in(ns, leak_argv(go_client, 5000, DURATION_MS, 1000), cgroup=cg)
    out, err = leaker.communicate(timeout=60)
    samples = sampler.stop()
    r = last_json(out)
    assert leaker.returncode == 0, err
    attempts = r["ok"] + r["eaddrnotavail"] + r["other"]
    assert r["ok"] == attempts and attempts >= 300, r

    out, _ = outsider.communicate(timeout=30)
    kept = last_json(out)["ok"]
    assert 20 <= kept < RANGE[1] - RANGE[0], kept
    # Bounded: about rate (200/s) x (50 ms + 200 ms) plus the outsider's.
    print(f"\nCLOSE_WAIT to :5000 during the run: max {max(samples)} "
          f"(outsider {kept}, {attempts} attempts)")
    assert max(samples) <= kept + 120, samples
    assert daemon.stop() == 0, daemon.text()
    assert bpf_attached(cg.path) == []

    leaks = [e for e in daemon.events if e["event"] == "leak"]
    s = json.loads(stats.read_text())
    assert len(leaks) == r["ok"] == s["close_wait_reaped"], (len(leaks), r, s["attach"])
    pid = leaker.pid  # nsenter execs env, env execs sh, sh execs go_client: the same PID
    odd = [e for e in leaks if not (e["pid"] == pid and e["comm"] == "go_client" and
                                    e["remote"] == "127.0.0.1:5000" and e["age_ms"] >= REAP_MS and
                                    e["unread"] == 6)]
    assert odd == [], (pid, odd)
    lines = [l for l in daemon.text().splitlines() if " leak: " in l]
    assert len(lines) == len(leaks)
    assert re.search(rf"leak: go_client \(pid {pid}\) left its connection 127\.0\.0\.1:\d+ -> "
                     r"127\.0\.0\.1:5000 in CLOSE_WAIT for \d", lines[0]), lines[0]
    assert s["destinations"]["127.0.0.1:5000"]["reaped"] == len(leaks)


def test_attach_sweeps_close_wait_sockets_older_than_itself(
        make_netns, make_cgroup, program, go_client, attach_cli):
    """Attached to a cgroup whose client already leaked: the sockets that
    entered CLOSE_WAIT before the attach are found by a sweep (by cgroup id)
    and reaped too; the owner comes from /proc."""
    ns = make_netns(RANGE)
    cg = make_cgroup()
    start_server(ns, program, 5000, greeting="hello\n", close_after_ms=50)
    leaker = popen_in(ns, leak_argv(go_client, 5000, 300, 6000), cgroup=cg)
    time.sleep(1.0)  # its loop is over (300 ms); the server closed each after 50 ms
    before = len(sockets(ns, "close-wait"))
    assert before >= 20
    daemon = Attach(ns, attach_cli, ["--cgroup", str(cg.path), "--reap-close-wait",
                                     f"{REAP_MS}ms"])
    deadline = time.monotonic() + 5
    while sockets(ns, "close-wait") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sockets(ns, "close-wait") == [] and leaker.poll() is None
    assert daemon.stop() == 0
    leaks = [e for e in daemon.events if e["event"] == "leak"]
    assert len(leaks) == before, (before, leaks)
    assert all(e["before_attach"] and e["pid"] == leaker.pid and e["comm"] == "go_client"
               for e in leaks), leaks[:3]
    leaker.kill()
