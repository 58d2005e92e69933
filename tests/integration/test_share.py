"""TCPFIX_SHARE: processes of one user that name the same share pace and back
off together, on real programs in namespaces the tests make.

  - the segment: /dev/shm/tcpfix-<uid>-<name>.v1, 0600, one per user; a
    segment that cannot be trusted (a symbolic link, another user's, open to
    others, truncated, altered, another layout version) gives one warning and
    the process paces on its own, the file untouched; a full table, one
    warning; a set-user-ID process ignores the share;
  - incident 000's shape: a shell loop of fresh prober processes against a
    refusing port follows one backoff schedule with a share, and none without;
    a port that opens again ends it for the next prober;
  - TCPFIX_CONNECT_RATE=50/s shared by 8 processes: 50/s in all over 10 s,
    each process a fair part; the counts of the processes add up in the share;
  - 100 processes SIGKILLed at random moments while they connect through the
    share: the survivors keep the rate and the backoff, `tcpfix top` still
    reads it and counts only the living;
  - `tcpfix top` live in a terminal (tmux), --json, and --prom checked by
    promtool.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BASE_ENV, CLI, PYTHON, tcpfix_env
from helpers import json_lines, read_stats, show
from share_env import (SynCounter, destination, schedule_attempts, segment_path, share_name,  # noqa: F401
                       start_acceptor, top_json)
from test_safety import NOBODY, probe_result, run_as_nobody, stress_bin, trusted_lib, world_dir  # noqa: F401

SEGMENT_SIZE = 4096 + 1024 * 128 + 1024 * 64

REFUSED_CLIENT = r"""
import json, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
out = []
for _ in range(n):
    t0 = time.monotonic()
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port)); r = "ok"
    except OSError as e:
        r = e.__class__.__name__
    s.close()
    out.append([round(time.monotonic() - t0, 4), r])
print(json.dumps(out))
"""


def refused_connects(ns, env, port=7400, n=1):
    """n connects to a refusing port in one Python process: [[seconds, result], ...]."""
    r = ns.run([PYTHON, "-c", REFUSED_CLIENT, str(port), str(n)], env=env, timeout=30)
    assert r.returncode == 0, show(r)
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def share_warnings(stderr: str, name: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith("tcpfix[") and f"TCPFIX_SHARE={name}" in l]


# -- the segment ------------------------------------------------------------------------------------

def test_segment_is_private_per_user_and_listed(netns, lib, share_name, world_dir):
    env = tcpfix_env(lib, share=share_name, reconnect_backoff="10ms:20ms")
    got, err = refused_connects(netns, env, n=3)
    assert [r for _, r in got] == ["ConnectionRefusedError"] * 3
    assert share_warnings(err, share_name) == [], err
    path = segment_path(share_name)
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == 0 and st.st_size == SEGMENT_SIZE, (st.st_uid, st.st_size)
    assert not list(Path("/dev/shm").glob(f".tcpfix-*-{share_name}.v1.*")), "a temporary file was left behind"

    # Another user naming the same share gets a segment of its own (umask 0: still 0600).
    libcopy = world_dir / "libtcpfix.so"
    shutil.copyfile(lib, libcopy)
    libcopy.chmod(0o755)
    r = run_as_nobody([PYTHON, "-c", REFUSED_CLIENT, "7400", "2"],
                      {"LD_PRELOAD": str(libcopy), "TCPFIX_SHARE": share_name}, world_dir, umask=0)
    assert r.returncode == 0, show(r)
    theirs = segment_path(share_name, NOBODY)
    st = theirs.lstat()
    assert st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) == 0o600, (st.st_uid, oct(st.st_mode))

    listing = subprocess.run([str(CLI), "top", "--json"], capture_output=True, text=True, timeout=15)
    assert listing.returncode == 0, listing.stderr
    shares = {(s["share"], s["uid"]): s for s in json.loads(listing.stdout)["shares"]}
    mine = shares[(share_name, 0)]
    assert mine["readable"] and mine["connects"] == 3 and mine["failures"] == 3 and mine["processes"] == 0, mine
    assert shares[(share_name, NOBODY)]["connects"] == 2, shares[(share_name, NOBODY)]
    text = subprocess.run([str(CLI), "top"], capture_output=True, text=True, timeout=15).stdout
    assert share_name in text and str(path) in text, text


def spoil_symlink(path: Path, tmp: Path):
    victim = tmp / "victim"
    victim.write_bytes(b"precious\n")
    path.unlink()
    path.symlink_to(victim)
    return "is a symbolic link"


def spoil_owner(path: Path, tmp: Path):
    os.chown(path, NOBODY, NOBODY)
    return "belongs to uid 65534"


def spoil_mode(path: Path, tmp: Path):
    path.chmod(0o644)
    return "is open to other users (mode 0644"


def spoil_truncate(path: Path, tmp: Path):
    os.truncate(path, 100)
    return "is shorter than its header"


def spoil_truncate_tables(path: Path, tmp: Path):
    os.truncate(path, SEGMENT_SIZE - 4096)
    return "is not the size its header declares"


def spoil_checksum(path: Path, tmp: Path):
    with open(path, "r+b") as f:
        f.seek(80)  # inside the name
        b = f.read(1)
        f.seek(80)
        f.write(bytes([b[0] ^ 0x20]))
    return "fails its checksum"


def spoil_version(path: Path, tmp: Path):
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 2))
    return "has another layout version"


def spoil_magic(path: Path, tmp: Path):
    with open(path, "r+b") as f:
        f.write(b"NOTASHAR")
    return "is not a tcpfix share"


@pytest.mark.parametrize("spoil", [spoil_symlink, spoil_owner, spoil_mode, spoil_truncate, spoil_truncate_tables,
                                   spoil_checksum, spoil_version, spoil_magic], ids=lambda f: f.__name__[6:])
def test_untrusted_segment_warns_once_and_falls_back(netns, lib, share_name, tmp_path, spoil):
    """A segment made by a first process, then spoiled. The next processes
    say why once and pace on their own: a second process's connect is not
    delayed by the first one's failure (with a working share it would wait
    at least 200 ms), and the file is left exactly as it was."""
    env = tcpfix_env(lib, share=share_name, reconnect_backoff="400ms:1s")
    refused_connects(netns, env)
    path = segment_path(share_name)
    why = spoil(path, tmp_path)
    before = path.lstat()
    content = hashlib.sha256(path.read_bytes()).hexdigest() if not path.is_symlink() else None

    for _ in range(2):
        got, err = refused_connects(netns, env, n=2)
        lines = share_warnings(err, share_name)
        assert len(lines) == 1, err
        assert why in lines[0] and str(path) in lines[0] and "paces its connects on its own" in lines[0], lines
        # Per process: its first connect goes at once, its second waits its own backoff.
        assert got[0][0] < 0.1, got
        assert got[1][0] >= 0.19, got
    after = path.lstat()
    assert (after.st_mode, after.st_uid, after.st_size, after.st_mtime_ns) == \
        (before.st_mode, before.st_uid, before.st_size, before.st_mtime_ns)
    if content:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == content
    else:
        assert (tmp_path / "victim").read_bytes() == b"precious\n"
    r = subprocess.run([str(CLI), "top", share_name, "--once"], capture_output=True, text=True, timeout=15)
    assert r.returncode != 0 and str(path) in r.stderr, (r.returncode, r.stdout, r.stderr)


def test_a_working_share_delays_the_next_process(netns, lib, share_name):
    """The control arm of the test above: the same two processes with the
    share intact — the second one's first connect waits for the first one's
    backoff (400 ms times a jitter in [0.5, 1))."""
    env = tcpfix_env(lib, share=share_name, reconnect_backoff="400ms:1s")
    refused_connects(netns, env)
    got, err = refused_connects(netns, env)
    assert share_warnings(err, share_name) == []
    assert 0.1 <= got[0][0] <= 1.5, got


def test_full_table_warns_once_and_paces_the_rest_per_process(netns, lib, share_name):
    """1,100 destinations (closed ports) for a table of 1,024: the ones that
    do not fit are paced per process, with one warning."""
    client = r"""
import socket, sys
refused = 0
for port in range(1, 1101):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        refused += 1
    s.close()
print(refused)
"""
    r = netns.run([PYTHON, "-c", client], env=tcpfix_env(lib, share=share_name), timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "1100", show(r)
    lines = share_warnings(r.stderr, share_name)
    assert len(lines) == 1 and "table of 1024 destinations is full" in lines[0], r.stderr
    top = top_json(None, share_name)
    assert 900 <= top["destinations_used"] <= 1024 and top["table_full"] >= 1100 - top["destinations_used"], \
        {k: v for k, v in top.items() if k != "destinations"}
    assert sum(d["connects"] for d in top["destinations"]) == top["destinations_used"]


def test_set_user_id_process_ignores_the_share(world_dir, trusted_lib, stress_bin, share_name):
    """A set-user-ID-root client run by nobody (secure execution): tcpfix
    applies its policy (the peer sees the RST) but leaves the share alone —
    one line says so, and no segment appears for either user."""
    env = {"LD_PRELOAD": trusted_lib, "TCPFIX_CLOSE": "rst", "TCPFIX_SHARE": share_name}
    probe = world_dir / "probe-setuid"
    shutil.copyfile(stress_bin("tcpfix_secure_probe"), probe)
    os.chown(probe, 0, 0)
    probe.chmod(0o4755)
    r = run_as_nobody([probe], env, world_dir)
    got = probe_result(r)
    assert got["at_secure"] == 1 and got["tcpfix_loaded"] and got["peer_end"] == "ECONNRESET", got
    assert "TCPFIX_SHARE ignored" in r.stderr, show(r)
    for uid in (0, NOBODY):
        assert not segment_path(share_name, uid).exists(), f"a secure process made {segment_path(share_name, uid)}"


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

def start_clients(ns, program, env, port, n, duration_ms, extra=()):
    return [ns.popen([program("share_client"), "-d", str(duration_ms), *extra, "127.0.0.1", str(port)], env=env)
            for _ in range(n)]


def finish(procs, timeout=60):
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"exit {p.returncode}\n{stdout}\n{stderr}"
        lines = json_lines(stdout)
        assert lines, stdout + stderr
        out.append(lines[-1])
    return out


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
    one_schedule_max = schedule_attempts(6, 0.05, 0.4, 0.5)
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


# -- tcpfix top ----------------------------------------------------------------------------------------

class Tmux:
    """A tmux server of our own (-L), so nothing of the user's is touched."""

    def __init__(self):
        if shutil.which("tmux") is None:
            raise AssertionError("tmux is not installed (apt-get install -y tmux)")
        self.socket = f"tcpfix-{secrets.token_hex(4)}"

    def __call__(self, *args, check=True):
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10,
                              check=check)

    def screen(self, target: str) -> str:
        return self("capture-pane", "-p", "-t", target).stdout

    def kill(self):
        self("kill-server", check=False)


def test_top_live_in_a_terminal(make_netns, lib, program, share_name, tmp_path):
    ns = make_netns((20000, 60000))
    port = 7440
    acceptor = start_acceptor(ns, port, lifetime_s=60)
    env = tcpfix_env(lib, share=share_name, connect_rate="20/s")
    tmux = Tmux()
    try:
        clients = start_clients(ns, program, env, port, 2, 9000)
        time.sleep(0.5)
        cmd = f"ip netns exec {ns.name} {CLI} top {share_name}"
        tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "30", cmd)
        screen = ""
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            time.sleep(0.5)
            screen = tmux.screen("top")
            if f"127.0.0.1:{port}" in screen and "processes attached: 2" in screen:
                time.sleep(1.2)  # one more refresh, the rates over a full interval
                screen = tmux.screen("top")
                break
        print(screen)
        assert f"tcpfix top - share {share_name} (uid 0)" in screen, screen
        assert "processes attached: 2" in screen, screen
        row = [l for l in screen.splitlines() if l.startswith(f"127.0.0.1:{port}")]
        assert row, screen
        cols = row[0].split()
        conn_per_s = float(cols[1])
        assert 14 <= conn_per_s <= 26, row
        assert cols[3] == "-", row  # healthy: no backoff
        tmux("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 3
        while tmux("has-session", "-t", "top", check=False).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tmux("has-session", "-t", "top", check=False).returncode != 0, "q did not end tcpfix top"
        finish(clients)
    finally:
        tmux.kill()
        acceptor.kill()


def test_top_json_and_prometheus_textfile(make_netns, lib, program, share_name, tmp_path):
    ns = make_netns((20000, 60000))
    port = 7450
    acceptor = start_acceptor(ns, port, lifetime_s=60)
    env = tcpfix_env(lib, share=share_name, reconnect_backoff="10ms:100ms")
    try:
        finish(start_clients(ns, program, env, port, 2, 1000, extra=("-n", "50")))
        finish(start_clients(ns, program, env, 7451, 1, 1000, extra=("-n", "3")))
    finally:
        acceptor.kill()
    prom = tmp_path / "textfile" / "tcpfix.prom"
    prom.parent.mkdir()
    r = ns.run([str(CLI), "top", share_name, "--once", "--json", "--interval", "100ms", "--prom", str(prom)])
    assert r.returncode == 0, show(r)
    top = json.loads(r.stdout)
    d = destination(top, f"127.0.0.1:{port}")
    assert d["connects"] == 100 and d["failures"] == 0, d
    refused = destination(top, "127.0.0.1:7451")
    assert refused["connects"] == 3 and refused["failures"] == 3 and refused["consecutive_failures"] == 3, refused
    assert refused["backoff_delay_ms"] == 40, refused
    # The TIME_WAIT entries toward it in the namespace, as ss counts them
    # (most of the 100: client and server close at about the same moment).
    tw = ns.time_wait_count(port)
    assert d["time_wait"] == tw and tw >= 50, (d, tw)
    text = prom.read_text()
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert (f'tcpfix_share_connects_total{{share="{share_name}",destination="127.0.0.1:{port}"}} 100\n') in text, text
    assert (f'tcpfix_share_backoff_delay_seconds{{share="{share_name}",destination="127.0.0.1:7451"}} 0.04\n') in text
    assert (f'tcpfix_share_time_wait_sockets{{share="{share_name}",destination="127.0.0.1:{port}"}} {tw}\n') in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install -y prometheus)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    # Without a name: every share of the host in one file.
    allprom = tmp_path / "textfile" / "all.prom"
    r = subprocess.run([str(CLI), "top", "--prom", str(allprom)], capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, r.stderr
    assert f'tcpfix_share_info{{share="{share_name}",uid="0"}} 1' in allprom.read_text()
    # Usage errors: one line, status 2.
    for argv, needle in ((["top", "no/such"], "a share name is"),
                         (["top", f"absent-{secrets.token_hex(3)}"], "no such share")):
        r = subprocess.run([str(CLI), *argv], capture_output=True, text=True, timeout=15)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, (argv, r.stderr)
