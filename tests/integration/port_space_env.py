"""Incident 002's environment for the port-space tests: an unmodified haproxy
(Debian's) in TCP mode inside a test's network namespace, the clients in a
second namespace joined to it by a veth pair, and the few observations the
tests make (haproxy's `show stat`, its stderr, TIME_WAIT entries by local
address).

Why two namespaces. Ephemeral ports belong to a namespace. If the clients
ran in haproxy's namespace, their connections to the frontend would use that
namespace's ports too (one TIME_WAIT each, since the clients close first),
and the clients could run out before haproxy does: the measurement would not
say whose ports ran out. In the incident the clients are other hosts. So:

    client namespace (wide port range)            haproxy namespace (narrow range)
    short_conn_client  10.77.0.1 --veth-->  10.77.0.2:FRONT  haproxy
                                                     |  connect() from 127.0.0.1 or
                                                     v  TCPFIX_SOURCE_ADDRS
                                             127.0.0.1:BACK  sink_server

Only haproxy's backend connects take ephemeral ports of the narrow range,
and haproxy is the side that closes them first: the client's FIN reaches
the frontend, haproxy passes it on as shutdown(SHUT_WR) on the backend
connection, the backend then closes, and haproxy's backend socket goes to
TIME_WAIT (KERNEL-FACTS 3) -- 60 s of one port per connection.

Nothing here skips: a haproxy that is missing or does not start raises, and
the test fails.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HAPROXY = "/usr/sbin/haproxy"

CLIENT_IP = "10.77.0.1"
HAPROXY_IP = "10.77.0.2"
FRONT_PORT = 8000
BACK_PORT = 9000
GREETING = "HELLO"  # what the backend sends on accept: the client's proof that the backend answered
REQUEST = "PING"     # what the client sends; the backend sees it as "PING\n"


class PortSpaceEnvError(RuntimeError):
    """The environment could not be set up (not a finding about tcpfix)."""


def link_namespaces(client_ns, server_ns, client_ip: str = CLIENT_IP,
                    server_ip: str = HAPROXY_IP) -> None:
    """A veth pair between two of the test's namespaces (never the host's):
    tfc0 in client_ns with client_ip/24, tfs0 in server_ns with server_ip/24.
    Deleting either namespace deletes the pair."""

    def ip(*args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise PortSpaceEnvError(f"ip {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")

    ip("-n", client_ns.name, "link", "add", "tfc0", "type", "veth", "peer", "name", "tfs0",
       "netns", server_ns.name)
    ip("-n", client_ns.name, "addr", "add", f"{client_ip}/24", "dev", "tfc0")
    ip("-n", server_ns.name, "addr", "add", f"{server_ip}/24", "dev", "tfs0")
    ip("-n", client_ns.name, "link", "set", "tfc0", "up")
    ip("-n", server_ns.name, "link", "set", "tfs0", "up")


def haproxy_config(sock: Path, front: tuple[str, int], back: tuple[str, int]) -> str:
    """A minimal TCP-mode haproxy: one frontend, one backend server, a stats
    socket, one thread, short timeouts (nothing in the tests waits for them)."""
    return f"""\
global
    nbthread 1
    maxconn 4000
    stats socket {sock} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 5s
    timeout server 5s

frontend fe
    bind {front[0]}:{front[1]}
    default_backend be

backend be
    server app {back[0]}:{back[1]}
"""


def _drain(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


@dataclass
class Haproxy:
    """haproxy -db (foreground) in a namespace, with its output collected."""

    proc: subprocess.Popen
    sock: Path
    config: Path
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start_readers(self) -> None:
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            t = threading.Thread(target=_drain, args=(stream, sink), daemon=True)
            t.start()
            self._threads.append(t)

    def command(self, cmd: str, timeout: float = 5.0) -> str:
        """One command on the stats socket (a unix socket: reachable from any
        network namespace)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.sock))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode()

    def stat(self) -> dict[tuple[str, str], dict[str, str]]:
        """`show stat` as {(pxname, svname): row}."""
        text = self.command("show stat")
        lines = text.strip().splitlines()
        if not lines or not lines[0].startswith("# "):
            raise AssertionError(f"unexpected `show stat` output:\n{text}")
        lines[0] = lines[0][2:]
        rows = csv.DictReader(io.StringIO("\n".join(lines)))
        return {(r["pxname"], r["svname"]): r for r in rows}

    def backend_counters(self, backend: str = "be", server: str = "app") -> dict[str, int]:
        """The counters that tell whether backend connects failed: econ
        (connection errors), wretr (retries), and the server's total sessions."""
        st = self.stat()
        be, srv = st[(backend, "BACKEND")], st[(backend, server)]

        def num(row, key):
            return int(row[key]) if row.get(key) not in (None, "") else 0

        return {"econ": num(be, "econ"), "wretr": num(be, "wretr"), "srv_econ": num(srv, "econ"),
                "srv_stot": num(srv, "stot"), "be_stot": num(be, "stot")}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return f"haproxy stdout:\n{''.join(self.stdout)}\nhaproxy stderr:\n{''.join(self.stderr)}"

    def no_free_ports_lines(self) -> list[str]:
        return [l for l in self.stderr if "no free ports" in l]

    def stop(self, timeout: float = 5.0) -> int:
        """SIGUSR1 (haproxy's soft stop: it finishes its connections and
        returns from main, so a preloaded library writes its stats at exit;
        SIGTERM kills haproxy 2.6 -db by the signal, before any exit
        handler), then SIGTERM and SIGKILL if it lingers. Returns the exit
        status (negative: killed by that signal)."""
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        for t in self._threads:
            t.join(2)
        return self.proc.returncode


def start_haproxy(ns, workdir: Path, env: dict[str, str] | None = None,
                  front: tuple[str, int] = (HAPROXY_IP, FRONT_PORT),
                  back: tuple[str, int] = ("127.0.0.1", BACK_PORT),
                  ready_timeout: float = 10.0) -> Haproxy:
    """Starts haproxy in `ns` with `env` (LD_PRELOAD, TCPFIX_*) added to a
    clean environment; returns once the stats socket answers and the frontend
    listens. Raises PortSpaceEnvError if haproxy is missing, exits, or is not
    ready in time: the caller's test fails, it is never skipped."""
    if not os.access(HAPROXY, os.X_OK):
        raise PortSpaceEnvError(f"{HAPROXY} not found: apt-get install -y haproxy")
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "haproxy.sock"
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(sock, front, back))
    check = ns.run([HAPROXY, "-c", "-f", str(config)])
    if check.returncode != 0:
        raise PortSpaceEnvError(f"haproxy -c rejected {config}:\n{check.stdout}{check.stderr}")
    proc = ns.popen([HAPROXY, "-db", "-f", str(config)], env=env)
    hp = Haproxy(proc=proc, sock=sock, config=config)
    hp.start_readers()
    deadline = time.monotonic() + ready_timeout
    last_error = "not tried"
    while time.monotonic() < deadline:
        if not hp.alive():
            hp.stop()
            raise PortSpaceEnvError(f"haproxy exited with {proc.returncode} while starting\n{hp.output()}")
        try:
            if "Name: HAProxy" in hp.command("show info", timeout=1.0):
                listening = ns.sockets("listening")
                if any(f"{front[0]}:{front[1]}" in l for l in listening):
                    return hp
                last_error = f"frontend not listening: {listening}"
        except OSError as e:
            last_error = repr(e)
        time.sleep(0.1)
    hp.stop()
    raise PortSpaceEnvError(f"haproxy not ready after {ready_timeout} s ({last_error})\n{hp.output()}")


def run_client(ns, program, host: str, port: int, count: int, env: dict[str, str] | None = None,
               request: str | None = REQUEST, expect: int = len(GREETING), rst: bool = False,
               timeout: float = 40) -> dict:
    """short_conn_client in `ns`; returns its JSON summary plus "lines" (the
    failure lines it printed)."""
    argv = [program("short_conn_client"), "-t", "2000"]
    if request is not None:
        argv += ["-q", request]
    if expect:
        argv += ["-e", str(expect)]
    if rst:
        argv += ["-R"]
    argv += [host, str(port), str(count)]
    r = ns.run(argv, env=env, timeout=timeout)
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert r.returncode == 0 and lines and lines[-1].startswith("{"), (
        f"short_conn_client failed: exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    summary = json.loads(lines[-1])
    summary["lines"] = lines[:-1]
    summary["stderr"] = r.stderr
    return summary


def local_addrs(entries: list[str]) -> Counter:
    """Local address of each `ss -Htan` line, counted: {"127.0.0.2": 100, ...}."""
    return Counter(line.split()[-2].rsplit(":", 1)[0] for line in entries)


def local_ports(entries: list[str]) -> list[int]:
    return [int(line.split()[-2].rsplit(":", 1)[1]) for line in entries]


def four_tuples(entries: list[str]) -> list[tuple[str, str]]:
    return [(line.split()[-2], line.split()[-1]) for line in entries]


__all__ = [
    "HAPROXY", "CLIENT_IP", "HAPROXY_IP", "FRONT_PORT", "BACK_PORT", "GREETING", "REQUEST",
    "PortSpaceEnvError", "link_namespaces", "haproxy_config", "Haproxy", "start_haproxy",
    "run_client", "local_addrs", "local_ports", "four_tuples",
]
