"""Incident 001: a client that leaks one socket per reconnect try, 1000 tries a
second, until the host's ephemeral ports are gone.

Two clients reproduce it, each with and without tcpfix, in a namespace of its
own (tcp_tw_reuse=0, ip_local_port_range of 2000 ports, below the 20,000
descriptors the clients are given):

* tests/programs/leak_client.c — the leak pattern exactly (blocking connect,
  read nothing, never close, usleep(1000), again) against
  tests/programs/greeting_server.c (accept, write a 132-byte greeting, close
  200 ms later), with tests/programs/port_probe.c as the second,
  well-behaved client of the same server in the same namespace.
* Unmodified sysbench 1.0.20 (Debian's) against a MariaDB 10.11 server
  (Debian's mariadb-server) started in the namespace by storm_env.py,
  oltp_read_only with --mysql-ignore-errors=all, its two server-side
  connections KILLed mid-run. The leak needs MariaDB Connector/C 3.1/3.2,
  i.e. Debian 11's libmariadb3 (10.5.29 -> Connector/C 3.1.29) with its
  libssl1.1, fetched by scripts/fetch-bullseye-mariadb.sh (apt-get download
  from the bullseye archive, nothing installed on the host) and put in front
  of the system's with LD_LIBRARY_PATH.

What was observed here without tcpfix (Linux 6.18, 2 cores, namespace with
ports 40000-41999; ranges over several runs):

leak_client against greeting_server (8 s):
  ~600-750 connects/s; all 2000 ports held by CLOSE_WAIT sockets (Recv-Q
  133: the 132-byte greeting + the FIN) after 2.7-3.5 s; from then on every
  connect fails with EADDRNOTAVAIL (1800-2900 of 3800-4900 attempts). The
  loop costs 0.80-0.94 s of CPU in 8 s (10-12 % of a core; 0.36 s when a
  wide range never runs out: a connect that scans a full range before
  failing is the expensive part). port_probe (140 probes 50 ms apart, from
  0.5 s on): ok=43-59, eaddrnotavail=81-97.

sysbench + Debian 12's own libmariadb3 (Connector/C 3.3.20): no leak — after
  the KILL it dies at once with SIGSEGV (gdb: mysql_optionsv called from
  mysql_real_connect, on the handle just mysql_close'd and mysql_init'ed).

sysbench + bullseye libmariadb3 (Connector/C 3.1.29), 2 threads, server
  max_connections=50, connect_timeout=10 s:
  * 150-2300 tps before the KILL (depending on the machine's load); 0 tps
    from the next second on, for good; reconn/s stays 0: not one reconnect
    succeeds, whatever the server does.
  * Each try (strace): socket, O_NONBLOCK, connect = EINPROGRESS, poll,
    SO_ERROR = 0, blocking again — and then nothing: no read, no write, no
    close; usleep(1000); next try. 300-500 tries/s per thread.
  * 1 s after the KILL: 630-1040 CLOSE_WAIT sockets; after 2-4 s: 1947
    CLOSE_WAIT + 51 ESTABLISHED = 1998 of the 2000 ports (the other two
    are TIME_WAIT entries of earlier CLI connects), and it stays there. The
    51 ESTABLISHED hold the server's slots (max_connections + the one extra
    MariaDB admits before it knows the user): the server sent its greeting
    (Recv-Q 104) and waits for an answer that never comes; after
    connect_timeout (10 s) it resets them (RST: no CLOSE_WAIT; their ports
    come back and are taken at once by the next tries). The CLOSE_WAIT ones
    are the tries refused for lack of slots: Recv-Q 28 (the 27-byte 1040
    error packet + the FIN), the peer closed, sysbench never does.
  * A `mariadb` CLI connect from the namespace: "1040 Too many connections"
    while ports remain, then "ERROR 2002 (HY000): Can't connect to server on
    '127.0.0.1' (99)" (EADDRNOTAVAIL) in every sample but the rare one that
    catches a port freed by a connect_timeout reset. Root over the unix
    socket gets 1040 too (its extra slot is taken).
  * sysbench's CPU: 15-25 % of one core in every second of the storm
    (1.9-2.4 s of CPU in 10-12 s).
  * sysbench ignores --time while it retries: the test must kill it.

With tcpfix the tests ask for (the SPEC's TCPFIX_REAP_CLOSE_WAIT,
TCPFIX_RECONNECT_BACKOFF, TCPFIX_CONNECT_RATE, TCPFIX_LOG, TCPFIX_STATS):
the well-behaved client never gets EADDRNOTAVAIL, leaked sockets stay
bounded, the storming client's CPU drops, the log names the leak, the stats
count reaped sockets and throttled time. sysbench itself cannot recover with
Connector/C 3.1 (its reconnect fails inside the client library whatever the
network does), so nothing is asserted about its QPS.

Bounds and why:
* CLOSE_WAIT at most a quarter of the range (500) at any time: with
  REAP_CLOSE_WAIT=1s a leaked socket holds its port for at most the peer's
  close delay + 1 s + one reaper pass, and the backoff, once the first
  abandoned connections are recognised, keeps the storm to about one try a
  second; only the burst before that (a few hundred ms at ~1000 tries/s)
  can be in CLOSE_WAIT together. Without tcpfix it is the whole range.
* In the second half of a run (the backoff long engaged), at most 100.
* The storming client's CPU: under half of the same client's without
  tcpfix in the same test (leak_client); under 5 % of a core for sysbench
  (16-25 % without).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import parse_summary, read_stats, tcpfix_env
from storm_env import (Drain, bullseye_libdir, close_wait_recvq, connector_version, cpu_seconds,
                       leak_client_summary, mariadb_server, raise_nofile, stop_process,
                       sysbench_reports, sysbench_run_argv, tcp_count)

PORT = 3306
PORT_RANGE = (40000, 41999)  # 2000 ports, below the clients' 20,000 descriptors
NOFILE = 20000
GREETING = 132  # what sat unread in each leaked socket in the incident

STORM_POLICY = {"TCPFIX_REAP_CLOSE_WAIT": "1s", "TCPFIX_RECONNECT_BACKOFF": "10ms:1s",
                "TCPFIX_LOG": "warn"}


def leak_lines(stderr: str, dest: str) -> list[str]:
    """tcpfix's log lines that name the leak: prefixed tcpfix[PID], naming
    the destination and calling it a leak / CLOSE_WAIT."""
    return [line for line in stderr.splitlines()
            if line.startswith("tcpfix[") and dest in line
            and ("leak" in line.lower() or "CLOSE_WAIT" in line)]


def wait_stats(stats_dir: Path, keys: tuple[str, ...], timeout: float) -> dict:
    """The newest stats JSON in stats_dir once every key in `keys` is > 0
    (the file is refreshed while the process runs); the last one read if
    the time runs out."""
    deadline = time.monotonic() + timeout
    last: dict = {}
    while True:
        files = sorted(stats_dir.glob("*.json"), key=lambda f: f.stat().st_mtime)
        if files:
            try:
                last = read_stats(files[-1], timeout=0.1)
            except (ValueError, AssertionError):
                pass
            if all(last.get(k, 0) > 0 for k in keys):
                return last
        if time.monotonic() > deadline:
            return last
        time.sleep(0.25)


# -- the C leak client -----------------------------------------------------------------------

class LeakStorm:
    """One run: greeting_server, leak_client (with `env`), port_probe alongside."""

    SECONDS = 8
    PROBES = 140          # 50 ms apart: 7 s, from 0.5 s after the storm starts
    PROBE_INTERVAL_US = 50000

    def __init__(self, ns, program, env: dict[str, str] | None):
        self.ns = ns
        self.cw_samples: list[tuple[float, int]] = []
        self.recvq: list[int] = []  # Recv-Q of the CLOSE_WAIT sockets, late in the run
        server = ns.popen([program("greeting_server"), "-a", "127.0.0.1", "-p", str(PORT),
                           "-g", str(GREETING), "-d", "200", "-t", str((self.SECONDS + 20) * 1000),
                           "-n", "8192"], preexec_fn=raise_nofile(NOFILE))
        ready = server.stdout.readline()
        assert ready.startswith("ready"), f"greeting_server did not start: {ready!r}"
        t0 = time.monotonic()
        client = ns.popen([program("leak_client"), "127.0.0.1", str(PORT), "1000000",
                           str(self.SECONDS * 1000)], env=env, preexec_fn=raise_nofile(NOFILE))
        client_out = Drain(client)
        time.sleep(0.5)
        probe = ns.popen([program("port_probe"), "127.0.0.1", str(PORT), str(self.PROBES),
                          str(self.PROBE_INTERVAL_US)])
        probe_out = Drain(probe)
        deadline = t0 + self.SECONDS + 15
        while client.poll() is None and time.monotonic() < deadline:
            self.cw_samples.append((time.monotonic() - t0, tcp_count(ns, "close-wait", PORT)))
            if self.cw_samples[-1][0] > self.SECONDS - 1 and not self.recvq:
                self.recvq = close_wait_recvq(ns, PORT)
            time.sleep(0.25)
        assert client.poll() is not None, "leak_client did not end in time"
        probe.wait(15)
        client_out.join()
        probe_out.join()
        stop_process(server)
        self.client_stdout, self.client_stderr = client_out.stdout, client_out.stderr
        self.probe_stdout = probe_out.stdout
        self.leak = leak_client_summary(self.client_stdout)
        self.probe = parse_summary(self.probe_stdout)

    @property
    def max_close_wait(self) -> int:
        return max((n for _, n in self.cw_samples), default=0)

    def close_wait_after(self, t: float) -> list[int]:
        return [n for at, n in self.cw_samples if at >= t]

    def show(self) -> str:
        return (f"leak_client: {self.leak}\nport_probe: {self.probe}\n"
                f"CLOSE_WAIT samples (s, count): {[(round(a, 2), n) for a, n in self.cw_samples]}\n"
                f"leak_client stderr (last 3000 chars):\n{self.client_stderr[-3000:]}")


def test_leak_client_exhausts_ports_without_tcpfix(make_netns, program):
    """The control arm: the leak pattern runs the namespace out of ports and
    the well-behaved client gets EADDRNOTAVAIL."""
    ns = make_netns(PORT_RANGE)
    run = LeakStorm(ns, program, env=None)
    print(run.show())
    size = ns.range_size
    # Every port ends up held by a leaked socket; then every try fails.
    assert size - 5 <= run.leak["connected"] <= size, run.show()
    assert run.leak["eaddrnotavail"] > 0 and run.leak["first_eaddrnotavail_ms"] >= 0, run.show()
    assert run.leak["other"] == 0, run.show()
    assert run.max_close_wait >= size * 0.95, run.show()
    # Each leaked socket: the peer's FIN received, its greeting never read.
    assert run.recvq and all(q >= GREETING for q in run.recvq), run.recvq[:20]
    # The second client of the same server, from the same namespace, fails.
    assert run.probe["eaddrnotavail"] > 0, run.show()


def test_leak_client_contained_with_tcpfix(make_netns, program, lib, stats_dir):
    """TCPFIX_REAP_CLOSE_WAIT=1s + TCPFIX_RECONNECT_BACKOFF=10ms:1s on the
    storming client only: the well-behaved client never fails, CLOSE_WAIT
    stays bounded, the storm's CPU drops, the log and the stats name the leak.
    The same client without tcpfix runs first, in a namespace of its own, as
    the CPU baseline (and to show the failure reproduces)."""
    base = LeakStorm(make_netns(PORT_RANGE), program, env=None)
    assert base.probe["eaddrnotavail"] > 0, base.show()

    ns = make_netns(PORT_RANGE)
    env = tcpfix_env(lib, **STORM_POLICY, TCPFIX_STATS=str(stats_dir / "leak-%p.json"))
    run = LeakStorm(ns, program, env=env)
    detail = run.show() + f"\nwithout tcpfix: {base.leak}"
    print(detail)

    assert run.probe == {"ok": LeakStorm.PROBES, "eaddrnotavail": 0, "other": 0}, detail
    assert run.max_close_wait <= ns.range_size // 4, detail
    assert max(run.close_wait_after(LeakStorm.SECONDS / 2), default=0) <= 100, detail
    assert run.leak["cpu_ms"] < base.leak["cpu_ms"] / 2, detail

    lines = leak_lines(run.client_stderr, f"127.0.0.1:{PORT}")
    assert lines, f"no log line names the leak to 127.0.0.1:{PORT}:\n{run.client_stderr[-3000:]}"
    assert any(str(GREETING) in line for line in lines), (
        f"no leak line gives the {GREETING} unread bytes:\n" + "\n".join(lines[:10]))
    stats = wait_stats(stats_dir, ("close_wait_reaped", "throttled_ms"), timeout=5)
    assert stats.get("close_wait_reaped", 0) >= 1, stats
    assert stats.get("throttled_ms", 0) > 0, stats


# -- sysbench against MariaDB ------------------------------------------------------------------

class SysbenchStorm:
    """sysbench oltp_read_only (2 threads) against `db`; KILLs its sessions
    after WARMUP seconds and samples once a second for `window` seconds:
    sockets to the server by state, sysbench's CPU, one `mariadb` CLI
    connect. Ends sysbench (SIGTERM) and returns."""

    WARMUP = 3.0

    def __init__(self, ns, db, env: dict[str, str], window: int, stats_dir: Path | None = None,
                 stats_keys: tuple[str, ...] = (), popen=None):
        # popen: how to start sysbench (default: in the namespace, this
        # machine's sysbench; test_userlands runs Debian 11's, chrooted).
        self.samples: list[dict] = []
        proc = (popen or ns.popen)(sysbench_run_argv(db, threads=2), env=env,
                                   preexec_fn=raise_nofile(NOFILE))
        out = Drain(proc)
        try:
            time.sleep(self.WARMUP)
            assert proc.poll() is None, f"sysbench ended before the KILL:\n{out.stdout}\n{out.stderr}"
            self.killed = db.kill_sessions()
            t_kill = time.monotonic()
            cpu0 = last_cpu = cpu_seconds(proc.pid)
            last_t = t_kill
            self.exit_after_kill: float | None = None
            for i in range(window):
                time.sleep(max(0.0, t_kill + i + 1 - time.monotonic()))
                if proc.poll() is not None:
                    self.exit_after_kill = time.monotonic() - t_kill
                    break
                now = time.monotonic()
                cpu = cpu_seconds(proc.pid)
                sample = {
                    "t": round(now - t_kill, 1),
                    "cpu_pct": round(100 * (cpu - last_cpu) / (now - last_t), 1),
                    "close_wait": tcp_count(ns, "close-wait", db.port),
                    "established": tcp_count(ns, "established", db.port),
                    # every socket to the server but TIME_WAIT (the CLI's
                    # own, one per sample): what the clients still hold
                    "to_server": tcp_count(ns, None, db.port, exclude="time-wait"),
                }
                last_cpu, last_t = cpu, now
                cli = db.cli_connect()
                sample["cli"] = cli.kind
                sample["cli_msg"] = cli.message[-90:]
                self.samples.append(sample)
            self.cpu_window = (last_cpu - cpu0, last_t - t_kill)
            self.stats = wait_stats(stats_dir, stats_keys, timeout=8) if stats_dir else {}
        finally:
            self.returncode = stop_process(proc)
            out.join()
        self.stdout, self.stderr = out.stdout, out.stderr
        self.reports = sysbench_reports(self.stdout)

    @property
    def cpu_fraction(self) -> float:
        used, wall = self.cpu_window
        return used / wall if wall > 0 else 0.0

    def cli_kinds(self, after: float = 0) -> list[str]:
        return [s["cli"] for s in self.samples if s["t"] >= after]

    def show(self) -> str:
        rows = "\n".join(
            f"  t+{s['t']:>4}s cpu {s['cpu_pct']:>5}% CLOSE_WAIT {s['close_wait']:>5} "
            f"ESTABLISHED {s['established']:>4} all {s['to_server']:>5} cli {s['cli']} {s['cli_msg']!r}"
            for s in self.samples)
        return (f"killed sessions {self.killed}; sysbench CPU {self.cpu_window[0]:.2f} s in "
                f"{self.cpu_window[1]:.1f} s; exit {self.returncode}\n{rows}\n"
                f"reports (s, tps, reconn/s): {self.reports[-25:]}\n"
                f"stats: {self.stats}\nsysbench stderr (last 3000):\n{self.stderr[-3000:]}")


@pytest.fixture(scope="module")
def bullseye_lib() -> Path:
    libdir = bullseye_libdir()
    assert connector_version(libdir).startswith("3.1."), connector_version(libdir)
    return libdir


def test_sysbench_debian12_connector_crashes(make_netns, tmp_path):
    """Debian 12's own libmariadb3 (Connector/C 3.3) does not leak: sysbench
    dies with SIGSEGV right after the KILL (mysql_optionsv called from
    mysql_real_connect on the handle it has just closed)."""
    assert connector_version(None).startswith("3.3."), connector_version(None)
    ns = make_netns(PORT_RANGE)
    with mariadb_server(ns, tmp_path) as db:
        proc = ns.popen(sysbench_run_argv(db, threads=2), preexec_fn=raise_nofile(NOFILE))
        out = Drain(proc)
        time.sleep(SysbenchStorm.WARMUP)
        assert proc.poll() is None, out.stdout
        assert db.kill_sessions(), "no sysbench session to KILL"
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            rc = None
        stop_process(proc)
        out.join()
        assert rc == -signal.SIGSEGV, f"exit {rc}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        assert tcp_count(ns, "close-wait", db.port) == 0


def test_sysbench_bullseye_leaks_without_tcpfix(make_netns, tmp_path, bullseye_lib):
    """The incident, reproduced: after the KILL sysbench's reconnect loop
    fills the port range with CLOSE_WAIT sockets within ~2 s, a `mariadb` CLI
    from the same namespace gets error 99, QPS stays 0, sysbench burns CPU."""
    ns = make_netns(PORT_RANGE)
    with mariadb_server(ns, tmp_path) as db:
        run = SysbenchStorm(ns, db, {"LD_LIBRARY_PATH": str(bullseye_lib)}, window=10)
    detail = run.show()
    print(detail)
    assert run.exit_after_kill is None, f"sysbench died instead of leaking\n{detail}"
    assert len(run.killed) == 2, detail
    assert any(tps > 0 for _, tps, _ in run.reports[:2]), detail
    size = ns.range_size
    assert max(s["close_wait"] for s in run.samples) >= size - 150, detail
    assert max(s["to_server"] for s in run.samples) >= size - 20, detail
    after = run.cli_kinds(after=3)
    assert after.count("eaddrnotavail") >= len(after) // 2 + 1, detail
    assert "ok" not in run.cli_kinds()[:2], detail
    # QPS never comes back; not one reconnect succeeds. (sysbench's clock
    # starts a moment after the process: the KILL is at its second ~3.)
    late = [r for r in run.reports if r[0] >= SysbenchStorm.WARMUP + 3]
    assert late and all(tps == 0 for _, tps, _ in late), detail
    assert all(reconn == 0 for _, _, reconn in run.reports), detail
    assert run.cpu_fraction >= 0.08, detail


def test_sysbench_bullseye_contained_with_tcpfix(make_netns, tmp_path, lib, bullseye_lib, stats_dir):
    """TCPFIX_REAP_CLOSE_WAIT=1s + TCPFIX_RECONNECT_BACKOFF=10ms:1s: the
    namespace's ports survive — a `mariadb` CLI never gets error 99 (it may
    get 1040 while leaked connections hold the server's slots: each holds
    one for MariaDB's 10 s connect_timeout) — CLOSE_WAIT stays bounded,
    sysbench's CPU stays low, the log names the leak. The window (20 s)
    outlasts connect_timeout, so the slots held by the first burst are
    reset within it."""
    ns = make_netns(PORT_RANGE)
    env = {"LD_LIBRARY_PATH": str(bullseye_lib),
           **tcpfix_env(lib, **STORM_POLICY, TCPFIX_STATS=str(stats_dir / "sysbench-%p.json"))}
    with mariadb_server(ns, tmp_path) as db:
        run = SysbenchStorm(ns, db, env, window=20, stats_dir=stats_dir,
                            stats_keys=("close_wait_reaped", "throttled_ms"))
    detail = run.show()
    print(detail)
    assert run.exit_after_kill is None, f"sysbench died\n{detail}"
    assert any(tps > 0 for _, tps, _ in run.reports[:2]), f"no load before the KILL\n{detail}"
    assert "eaddrnotavail" not in run.cli_kinds(), detail
    assert set(run.cli_kinds()) <= {"ok", "too_many"}, detail
    assert max(s["close_wait"] for s in run.samples) <= ns.range_size // 4, detail
    assert max(s["to_server"] for s in run.samples) <= ns.range_size // 4, detail
    assert max((s["close_wait"] for s in run.samples if s["t"] >= 10), default=0) <= 100, detail
    assert run.cpu_fraction < 0.05, detail
    lines = leak_lines(run.stderr, f"127.0.0.1:{PORT}")
    assert lines, f"no log line names the leak to 127.0.0.1:{PORT}\n{detail}"
    assert run.stats.get("close_wait_reaped", 0) >= 1, detail
    assert run.stats.get("throttled_ms", 0) > 0, detail


def test_sysbench_bullseye_connect_rate_keeps_server_slots(make_netns, tmp_path, lib, bullseye_lib,
                                                          stats_dir):
    """TCPFIX_CONNECT_RATE=2/s (with TCPFIX_REAP_CLOSE_WAIT=1s): every leaked
    connection holds a server slot for connect_timeout (10 s), so at 2 tries
    a second at most ~20 of the 50 slots are ever held by leaks, and a
    `mariadb` CLI from the namespace connects outright every time."""
    ns = make_netns(PORT_RANGE)
    env = {"LD_LIBRARY_PATH": str(bullseye_lib),
           **tcpfix_env(lib, TCPFIX_REAP_CLOSE_WAIT="1s", TCPFIX_CONNECT_RATE="2/s",
                        TCPFIX_LOG="warn", TCPFIX_STATS=str(stats_dir / "sysbench-%p.json"))}
    with mariadb_server(ns, tmp_path) as db:
        run = SysbenchStorm(ns, db, env, window=15, stats_dir=stats_dir, stats_keys=("throttled_ms",))
    detail = run.show()
    print(detail)
    assert run.exit_after_kill is None, f"sysbench died\n{detail}"
    assert run.cli_kinds() == ["ok"] * len(run.samples), detail
    assert max(s["to_server"] for s in run.samples) <= 2 * 10 + 10, detail
    assert run.cpu_fraction < 0.05, detail
    assert run.stats.get("throttled_ms", 0) > 0, detail
