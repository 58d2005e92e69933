"""Incident 003's environment for the connect-deadline tests: lost SYNs made
real inside a test's network namespace, servers that answer late or never,
and the clients that suffer from them (tcpfix churn, unmodified php-redis,
tests/programs/timed_client).

  * `SynLoss.install(ns, port, one_in=5)`: nftables drops every SYN to PORT
    with probability 1/one_in (`numgen random mod N == 0`) on the input hook;
    on loopback the SYN passes output, then input, so each SYN is judged
    once. Two counting rules (comments "seen" and "dropped") let a test
    measure the loss it really got instead of trusting the rule.
  * `FirstSynDrop.install(ns, port)`: drops exactly the first SYN to PORT
    (`numgen inc mod 2 == 0`: the 1st, 3rd, ... SYN; the tests make two) and
    records every SYN's source port in a dynamic set, so the kernel itself
    says which source ports the handshakes used.
  * `start_full_backlog_listener(ns, port)`: listen(fd, 0), never accept(),
    queue already full (one established connection, two more in SYN_SENT):
    every further SYN is dropped by the listener, so a connect hangs.
  * `start_redis(ns, port, workdir)`: redis-server in the namespace, no
    persistence; FAILS (raises) when it cannot start, never skips.

Nothing here skips: a missing nft, redis-server or php-redis raises, and the
test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import PYTHON, Netns

REPO = Path(__file__).resolve().parents[2]
PHP_LOOP = REPO / "tests" / "programs" / "php_redis_loop.php"
PHP = "/usr/bin/php"
REDIS_SERVER = "/usr/bin/redis-server"
NFT = "/usr/sbin/nft"


class DeadlineEnvError(RuntimeError):
    """The environment could not be set up (a failure, never a skip)."""


def require(path: str, package: str) -> str:
    if not os.access(path, os.X_OK):
        raise DeadlineEnvError(f"{path} not found: apt-get install -y {package}")
    return path


def nft(ns: Netns, script: str) -> None:
    """Runs an nft script (`nft -f -`) inside the namespace."""
    require(NFT, "nftables")
    r = ns.run([NFT, "-f", "-"], stdin=script, timeout=10)
    if r.returncode != 0:
        raise DeadlineEnvError(f"nft failed ({r.returncode}): {r.stderr}\nscript:\n{script}")


def nft_table_json(ns: Netns, table: str) -> list[dict]:
    r = ns.run([NFT, "-j", "list", "table", "inet", table], timeout=10)
    if r.returncode != 0:
        raise DeadlineEnvError(f"nft list table inet {table}: {r.stderr}")
    return json.loads(r.stdout)["nftables"]


def rule_counters(ns: Netns, table: str) -> dict[str, int]:
    """{comment: packets} for every rule of `table` that has a comment and a counter."""
    out: dict[str, int] = {}
    for item in nft_table_json(ns, table):
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule.get("expr", []):
            if isinstance(expr, dict) and "counter" in expr:
                out[rule["comment"]] = int(expr["counter"]["packets"])
    return out


@dataclass
class SynLoss:
    """Random SYN loss to one port of the namespace."""

    ns: Netns
    port: int
    one_in: int
    table: str = "tcpfix_synloss"

    @classmethod
    def install(cls, ns: Netns, port: int, one_in: int = 5) -> "SynLoss":
        loss = cls(ns, port, one_in)
        nft(ns, f"""
table inet {loss.table} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} tcp flags syn counter comment "seen"
    tcp dport {port} tcp flags syn numgen random mod {one_in} == 0 counter drop comment "dropped"
  }}
}}
""")
        return loss

    def counters(self) -> tuple[int, int]:
        """(SYNs seen, SYNs dropped) so far."""
        c = rule_counters(self.ns, self.table)
        return c["seen"], c["dropped"]


@dataclass
class FirstSynDrop:
    """Drops the first SYN to a port; records the source port of every SYN."""

    ns: Netns
    port: int
    table: str = "tcpfix_firstsyn"

    @classmethod
    def install(cls, ns: Netns, port: int) -> "FirstSynDrop":
        """(Re)creates the table, so numgen starts again at the first SYN."""
        d = cls(ns, port)
        ns.run([NFT, "delete", "table", "inet", d.table], timeout=10)  # absent is fine
        nft(ns, f"""
table inet {d.table} {{
  set syn_sports {{ type inet_service; flags dynamic; size 1024; }}
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {port} tcp flags syn add @syn_sports {{ tcp sport }} counter comment "seen"
    tcp dport {port} tcp flags syn numgen inc mod 2 == 0 counter drop comment "dropped"
  }}
}}
""")
        return d

    def counters(self) -> tuple[int, int]:
        c = rule_counters(self.ns, self.table)
        return c["seen"], c["dropped"]

    def source_ports(self) -> set[int]:
        """The source ports of every SYN that reached the input hook."""
        for item in nft_table_json(self.ns, self.table):
            s = item.get("set")
            if s and s.get("name") == "syn_sports":
                return {int(e) for e in s.get("elem", [])}
        raise DeadlineEnvError("set syn_sports not found")


# --- processes whose first line says they are ready -------------------------

class LineReader:
    """Reads a process's stdout lines on a thread; wait_for(pred, timeout)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pred, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self._q.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if line is None:
                return None
            self.lines.append(line)
            if pred(line):
                return line


FULL_BACKLOG_LISTENER = r"""
import json, os, socket, sys, time
port, lifetime = int(sys.argv[1]), float(sys.argv[2])
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port))
l.listen(0)                      # accept queue of one; never accept()ed
fillers = []
for _ in range(3):               # 1 completes and fills the queue, 2 hang in SYN_SENT
    c = socket.socket()
    c.setblocking(False)
    try:
        c.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    fillers.append(c)
time.sleep(0.2)
print(json.dumps({"event": "ready", "port": port, "pid": os.getpid()}), flush=True)
time.sleep(lifetime)
"""


def start_full_backlog_listener(ns: Netns, port: int, lifetime_s: float = 55) -> subprocess.Popen:
    """A listener whose accept queue is full: SYNs to it go unanswered."""
    p = ns.popen([PYTHON, "-c", FULL_BACKLOG_LISTENER, str(port), str(lifetime_s)])
    reader = LineReader(p)
    if reader.wait_for(lambda l: '"ready"' in l, 5) is None:
        p.kill()
        raise DeadlineEnvError(f"full-backlog listener on {port} did not start: "
                               f"{''.join(reader.lines)}{p.stderr.read() if p.poll() is not None else ''}")
    established = ns.sockets("established", port)
    syn_sent = ns.sockets("syn-sent", port)
    if len(established) < 1 or len(syn_sent) < 1:
        raise DeadlineEnvError(f"listener {port}: queue not full: established={established} "
                               f"syn-sent={syn_sent}")
    return p


@contextlib.contextmanager
def start_redis(ns: Netns, port: int, workdir: Path, timeout: float = 10):
    """redis-server on 127.0.0.1:port of the namespace; stopped on exit."""
    require(REDIS_SERVER, "redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    p = ns.popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                  "--save", "", "--appendonly", "no", "--protected-mode", "no",
                  "--daemonize", "no", "--dir", str(workdir), "--logfile", "",
                  "--maxclients", "1000", "--tcp-backlog", "511"],
                 stderr=subprocess.STDOUT)
    reader = LineReader(p)
    try:
        if reader.wait_for(lambda l: "Ready to accept connections" in l, timeout) is None:
            raise DeadlineEnvError(f"redis-server did not start on {port} (exit {p.poll()}):\n"
                                   f"{''.join(reader.lines)}")
        yield p
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def require_php_redis(ns: Netns) -> None:
    require(PHP, "php-cli")
    r = ns.run([PHP, "-r", 'echo class_exists("Redis") ? phpversion("redis") : "missing";'])
    if r.returncode != 0 or r.stdout.strip() in ("", "missing"):
        raise DeadlineEnvError(f"php-redis is not loaded (apt-get install -y php-redis): "
                               f"{r.stdout}{r.stderr}")


def php_loop_argv(host: str, port: int, count: int, budget_s: float, max_s: float) -> list[str]:
    return [PHP, str(PHP_LOOP), host, str(port), str(count), str(budget_s), str(max_s)]
