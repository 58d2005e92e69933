"""What the TCPFIX_SHARE tests share: unique share names whose segments are
removed afterwards, a SYN counter (nftables), a listener that accepts and
closes, a refusing port, the arithmetic of one backoff schedule, `tcpfix top`
as a library of JSON, and incident 003's client as a pool: PHP-FPM (Debian's
php-fpm, pm=static) with php-redis, asked by Debian's `cgi-fcgi` (libfcgi-bin)
from a bounded load generator, against a redis-server the test stops and
starts again.

Nothing here skips: a missing php-fpm, cgi-fcgi, redis-server or nft raises,
and the test fails.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import CLI, PYTHON, Netns, json_lines
from deadline_env import LineReader, nft, require, rule_counters

PHP_FPM = "/usr/sbin/php-fpm8.2"
CGI_FCGI = "/usr/bin/cgi-fcgi"
REDIS_SERVER = "/usr/bin/redis-server"
SHM = Path("/dev/shm")


# -- shares ----------------------------------------------------------------------------------------

def segment_path(name: str, uid: int = 0) -> Path:
    return SHM / f"tcpfix-{uid}-{name}.v1"


@pytest.fixture
def share_name():
    """A share name no other test (or run) uses; its segment in /dev/shm,
    and any temporary file of its creation, are removed afterwards."""
    name = f"test-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        for f in SHM.glob(f"*tcpfix-*-{name}.v*"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                f.unlink()


def top_json(ns: Netns | None, name: str, interval: str = "200ms", timeout: float = 15) -> dict:
    """`tcpfix top NAME --once --json` (inside ns when given: TIME_WAIT is per namespace)."""
    argv = [str(CLI), "top", name, "--once", "--json", "--interval", interval]
    r = ns.run(argv, timeout=timeout) if ns else subprocess.run(argv, capture_output=True, text=True,
                                                                 timeout=timeout)
    assert r.returncode == 0, f"tcpfix top failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout)


def destination(top: dict, dest: str) -> dict:
    found = [d for d in top["destinations"] if d["destination"] == dest]
    assert found, f"{dest} not in the share: {top}"
    return found[0]


# -- the network -----------------------------------------------------------------------------------

@dataclass
class SynCounter:
    """Counts SYNs to a port of the namespace (nftables, input hook)."""

    ns: Netns
    port: int
    table: str = "tcpfix_syns"

    @classmethod
    def install(cls, ns: Netns, port: int) -> "SynCounter":
        c = cls(ns, port)
        nft(ns, f"""
table inet {c.table} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} tcp flags & (syn | ack) == syn counter comment "syns"
  }}
}}
""")
        return c

    def read(self) -> int:
        return rule_counters(self.ns, self.table)["syns"]


ACCEPT_AND_CLOSE = r"""
import socket, sys, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(4096); print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
l.settimeout(1)
while time.monotonic() < end:
    try:
        c, _ = l.accept()
    except socket.timeout:
        continue
    c.close()
"""


def start_acceptor(ns: Netns, port: int, lifetime_s: float = 120) -> subprocess.Popen:
    """A listener that accepts and closes every connection (the client closes
    first or at the same moment: its TIME_WAIT entries need a wide range)."""
    p = ns.popen([PYTHON, "-c", ACCEPT_AND_CLOSE, str(port), str(lifetime_s)])
    line = p.stdout.readline()
    assert line.strip() == "ready", f"acceptor on {port} did not start: {line!r} {p.stderr.read()}"
    return p


def schedule_attempts(window_s: float, min_s: float, max_s: float, jitter: float) -> int:
    """Attempts one process makes to a dead destination in window_s under
    TCPFIX_RECONNECT_BACKOFF=MIN:MAX when every delay takes the jitter factor
    `jitter` (0.5 gives the most attempts, 1.0 the fewest): the first at 0,
    then after MIN, 2 MIN, ... up to MAX each."""
    t, n, delay = 0.0, 1, min_s
    while True:
        t += delay * jitter
        if t > window_s:
            return n
        n += 1
        delay = min(delay * 2, max_s)


# -- pools of share_client -------------------------------------------------------------------------

def start_clients(ns, program, env, port, n, duration_ms, extra=()):
    """n tests/programs/share_client processes connecting to 127.0.0.1:port for duration_ms."""
    return [ns.popen([program("share_client"), "-d", str(duration_ms), *extra, "127.0.0.1", str(port)], env=env)
            for _ in range(n)]


def finish(procs, timeout=60):
    """Waits for share_client processes; their JSON summaries, in order."""
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"exit {p.returncode}\n{stdout}\n{stderr}"
        lines = json_lines(stdout)
        assert lines, stdout + stderr
        out.append(lines[-1])
    return out



# -- redis, PHP-FPM and the load ------------------------------------------------------------------

class RedisServer:
    """redis-server on 127.0.0.1:PORT of the namespace, stopped and started at will."""

    def __init__(self, ns: Netns, port: int, workdir: Path):
        require(REDIS_SERVER, "redis-server")
        self.ns, self.port, self.workdir = ns, port, workdir
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 10) -> None:
        p = self.ns.popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                           "--dir", str(self.workdir), "--logfile", "", "--maxclients", "4000",
                           "--tcp-backlog", "511"], stderr=subprocess.STDOUT)
        reader = LineReader(p)
        if reader.wait_for(lambda l: "Ready to accept connections" in l, timeout) is None:
            p.kill()
            raise AssertionError(f"redis-server did not start on {self.port}: {''.join(reader.lines)}")
        self.proc = p

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        self.proc = None


PAGE = r"""<?php
// One request of the pool's application: a short connection to redis (as
// the incident's PHP did), one command, close.
$r = new Redis();
try {
    $r->connect('127.0.0.1', REDIS_PORT, 2.0);
    $n = $r->incr('hits');
    $r->close();
    echo "ok $n\n";
} catch (RedisException $e) {
    echo "error: ", $e->getMessage(), "\n";
}
"""


class FpmPool:
    """php-fpm (pm = static, `workers` children) listening on 127.0.0.1:9000
    of the namespace; `env` goes to the master (LD_PRELOAD and TCPFIX_*
    reach every worker it forks)."""

    def __init__(self, ns: Netns, workdir: Path, env: dict[str, str], workers: int = 16, redis_port: int = 6379,
                 fpm_port: int = 9000):
        require(PHP_FPM, "php-fpm")
        require(CGI_FCGI, "libfcgi-bin")
        self.ns, self.workdir, self.workers, self.fpm_port = ns, workdir, workers, fpm_port
        workdir.mkdir(parents=True, exist_ok=True)
        self.page = workdir / "page.php"
        self.page.write_text(PAGE.replace("REDIS_PORT", str(redis_port)))
        self.conf = workdir / "fpm.conf"
        self.conf.write_text(f"""[global]
pid = {workdir}/fpm.pid
error_log = {workdir}/fpm.log
daemonize = no
[pool]
listen = 127.0.0.1:{fpm_port}
listen.backlog = 1024
pm = static
pm.max_children = {workers}
pm.max_requests = 0
request_terminate_timeout = 120
catch_workers_output = yes
clear_env = no
""")
        self.proc = ns.popen([PHP_FPM, "-F", "-R", "-y", str(self.conf), "-c", "/etc/php/8.2/fpm/php.ini"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while True:
            out = self.request()
            if out.startswith("ok") or out.startswith("error"):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"php-fpm did not answer: {out!r}\n{self.log()}")
            time.sleep(0.1)
        # The master forks its children one after another: wait for all.
        while len(self._workers()) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        self.worker_pids = self._workers()
        if len(self.worker_pids) != workers:
            raise AssertionError(f"php-fpm has {len(self.worker_pids)} workers, not {workers}")

    def _workers(self) -> list[int]:
        r = subprocess.run(["pgrep", "-P", str(self._master_pid())], capture_output=True, text=True)
        return [int(x) for x in r.stdout.split()]

    def _master_pid(self) -> int:
        deadline = time.monotonic() + 5
        pid_file = self.workdir / "fpm.pid"
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return int(pid_file.read_text().strip())

    def request(self, timeout: float = 30) -> str:
        """One FastCGI request for the page, by cgi-fcgi (not preloaded)."""
        env = {"SCRIPT_FILENAME": str(self.page), "REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1"}
        try:
            r = self.ns.run([CGI_FCGI, "-bind", "-connect", f"127.0.0.1:{self.fpm_port}"], env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout"
        body = r.stdout.split("\n\n", 1)[-1] if "\n\n" in r.stdout else r.stdout
        body = body.replace("\r", "").strip()
        return body or f"fail: exit {r.returncode} {r.stderr.strip()[:200]}"

    def log(self) -> str:
        try:
            return (self.workdir / "fpm.log").read_text()[-3000:]
        except OSError as e:
            return f"(no log: {e})"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class LoadGen:
    """`concurrency` threads, each asking the pool for the page in a loop,
    until stop() or `max_requests` in all. Records (end time, outcome) of
    every request: "ok", "error" (the page's RedisException) or "fail"."""

    pool: FpmPool
    concurrency: int = 24
    max_requests: int = 20000
    results: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.concurrency)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if len(self.results) >= self.max_requests:
                    return
            out = self.pool.request()
            kind = "ok" if out.startswith("ok") else "error" if out.startswith("error") else "fail"
            with self._lock:
                self.results.append((time.monotonic(), kind))

    def stop(self, timeout: float = 60) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    def between(self, t0: float, t1: float) -> dict[str, int]:
        with self._lock:
            out = {"ok": 0, "error": 0, "fail": 0}
            for t, kind in self.results:
                if t0 <= t < t1:
                    out[kind] += 1
            return out

    def first(self, kind: str, after: float) -> float | None:
        with self._lock:
            times = [t for t, k in self.results if k == kind and t >= after]
        return min(times) if times else None

    def last(self, kind: str, after: float) -> float | None:
        with self._lock:
            times = [t for t, k in self.results if k == kind and t >= after]
        return max(times) if times else None
