"""Fixtures for tcpfix's integration tests.

Every test that needs the network gets a network namespace of its own
(`ip netns add tcpfix-<random>`) with lo up, `net.ipv4.tcp_tw_reuse=0` and a
narrow `net.ipv4.ip_local_port_range`, so TIME_WAIT exhaustion reproduces
(the host's loopback has tcp_tw_reuse=2 and would hide it), and
`net.ipv4.tcp_rfc1337=1`, so it reproduces exactly: with 0, now and then the
client answers the server's FIN with two identical ACKs, the second meets the
server socket already CLOSED, its RST kills the client's TIME_WAIT entry
(RFC 1337's "TIME-WAIT assassination") and a later connect gets that port
again. Seen without tcpfix in about one run in three, a few ports to 20% of a
range more; with 1, the ceiling was exact in every one of 40 runs. The
namespace
and every process in it are removed after the test, pass or fail.

The build is found through $TCPFIX_BUILD_DIR (default: <repo>/build). A
missing library, CLI or test program is a failure, never a skip: a test suite
that silently skips everything proves nothing.

Needs root (network namespaces, sysctl inside them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("TCPFIX_BUILD_DIR", str(REPO / "build"))).resolve()
LIB = BUILD / "libtcpfix.so"
CLI = BUILD / "tcpfix"
PROGRAMS = BUILD / "tests" / "programs"
HERE = Path(__file__).resolve().parent
PYTHON = "/usr/bin/python3"

# A clean environment for every process a test starts: nothing of the
# caller's LD_PRELOAD or TCPFIX_* leaks in.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}

DEFAULT_PORT_RANGE = (40000, 40019)  # 20 ports; lo and hi of different parity


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        pytest.fail(
            f"{what} not found at {path}: build first "
            f"(cmake -S {REPO} -B {BUILD} && cmake --build {BUILD} -j2) "
            f"or point TCPFIX_BUILD_DIR at the build tree",
            pytrace=False,
        )
    return path


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the integration tests need root (ip netns, sysctl)", pytrace=False)
    if shutil.which("ip") is None or shutil.which("ss") is None:
        pytest.fail("iproute2 (ip, ss) is required", pytrace=False)


@pytest.fixture(scope="session")
def lib() -> Path:
    return _require_file(LIB, "libtcpfix.so")


@pytest.fixture(scope="session")
def cli() -> Path:
    return _require_file(CLI, "the tcpfix CLI")


@pytest.fixture(scope="session")
def program():
    """program("port_probe") -> path of a built tests/programs/ binary."""

    def find(name: str) -> str:
        return str(_require_file(PROGRAMS / name, f"test program {name}"))

    return find


def tcpfix_env(lib: Path, **variables: str) -> dict[str, str]:
    """LD_PRELOAD plus the given TCPFIX_* variables (keyword names without
    the prefix are accepted: close="rst" -> TCPFIX_CLOSE=rst)."""
    env = {"LD_PRELOAD": str(lib)}
    for name, value in variables.items():
        key = name if name.startswith("TCPFIX_") else "TCPFIX_" + name.upper()
        env[key] = str(value)
    return env


def parse_summary(stdout: str) -> dict[str, int]:
    """The prober's last line, `ok=N eaddrnotavail=N other=N`, as a dict."""
    lines = [l for l in stdout.strip().splitlines() if l.strip()]
    assert lines, f"prober printed nothing:\n{stdout}"
    fields = dict(part.split("=", 1) for part in lines[-1].split())
    assert set(fields) == {"ok", "eaddrnotavail", "other"}, f"bad summary line: {lines[-1]!r}"
    return {k: int(v) for k, v in fields.items()}


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def read_stats(path: Path, timeout: float = 5.0) -> dict:
    """The stats JSON a preloaded process wrote at exit."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"no stats file at {path} (TCPFIX_STATS not honoured?)"
    return json.loads(path.read_text())


class Sink:
    """A sink_server running in the namespace; collects its JSON lines."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port
        self.events: list[dict] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.raw.append(line)
                line = line.strip()
                if line.startswith("{"):
                    try:
                        self.events.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _wait_for(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if not self._reader.is_alive() and not pred():
                    return pred()
                self._cond.wait(min(left, 0.1))
            return True

    def wait_ready(self, timeout: float = 5.0) -> None:
        ok = self._wait_for(lambda: any(e.get("event") == "ready" for e in self.events), timeout)
        if not ok:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            raise AssertionError(f"sink on port {self.port} did not start: {''.join(self.raw)}{err}")

    @property
    def ends(self) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e.get("event") == "end"]

    def wait_ends(self, n: int, timeout: float = 10.0) -> list[dict]:
        """Waits until n connections have ended (from the peer's view)."""
        ok = self._wait_for(lambda: len([e for e in self.events if e.get("event") == "end"]) >= n,
                            timeout)
        ends = self.ends
        assert ok, f"sink on port {self.port}: {len(ends)} of {n} connections ended:\n{ends}"
        return ends

    def by_port(self, local_port: int, timeout: float = 10.0) -> dict:
        """The peer's view of the connection from client port local_port."""
        suffix = f":{local_port}"
        found: list[dict] = []

        def pred():
            found[:] = [e for e in self.events
                        if e.get("event") == "end" and e["peer"].endswith(suffix)]
            return bool(found)

        assert self._wait_for(pred, timeout), (
            f"sink on port {self.port}: no ended connection from client port {local_port}; "
            f"ended: {self.ends}")
        assert len(found) == 1, f"several connections from port {local_port}: {found}"
        return found[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        self._reader.join(3)


@dataclass
class Netns:
    """A throw-away network namespace with TIME_WAIT reuse off."""

    name: str
    port_range: tuple[int, int]
    procs: list[subprocess.Popen] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)

    # -- plumbing --
    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                              check=check)

    def setup(self) -> None:
        self._ip("netns", "add", self.name)
        self._ip("-n", self.name, "link", "set", "lo", "up")
        lo, hi = self.port_range
        self.sysctl("net.ipv4.tcp_tw_reuse", "0")
        self.sysctl("net.ipv4.tcp_rfc1337", "1")
        self.sysctl("net.ipv4.ip_local_port_range", f"{lo} {hi}")
        got = self.run(["sysctl", "-n", "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_rfc1337",
                        "net.ipv4.ip_local_port_range"])
        values = got.stdout.split()
        assert values == ["0", "1", str(lo), str(hi)], f"namespace sysctls not applied: {got.stdout!r}"

    def teardown(self) -> None:
        for sink in self.sinks:
            try:
                sink.stop()
            except Exception:
                pass
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        # Whatever else still runs in the namespace (children of children).
        pids = self._ip("netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        for p in self.procs:
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                pass
        self._ip("netns", "del", self.name, check=False)

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"], check=True)

    @property
    def range_size(self) -> int:
        return self.port_range[1] - self.port_range[0] + 1

    def argv(self, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        """argv run inside the namespace with a clean environment plus env.
        The preload goes in through `env`, after `ip` has entered the
        namespace, so `ip` itself never loads the library."""
        pairs = [f"{k}={v}" for k, v in {**BASE_ENV, **(env or {})}.items()]
        return ["ip", "netns", "exec", self.name, "/usr/bin/env", "-i", *pairs, *map(str, argv)]

    # -- running things --
    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 20,
            check: bool = False, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv, env), capture_output=True, text=True,
                              timeout=timeout, check=check, input=stdin)

    def popen(self, argv: list[str], env: dict[str, str] | None = None,
              **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        p = subprocess.Popen(self.argv(argv, env), **kwargs)
        self.procs.append(p)
        return p

    def start_sink(self, sink_path: str, port: int, addr: str = "127.0.0.1",
                   max_conns: int = 0, timeout_ms: int = 30000, read_delay_us: int = 0,
                   chunk: int = 0, rcvbuf: int = 0, greeting: str | None = None,
                   close_after_ms: int | None = None) -> Sink:
        argv = [sink_path, "-a", addr, "-p", str(port), "-t", str(timeout_ms)]
        if max_conns:
            argv += ["-n", str(max_conns)]
        if read_delay_us:
            argv += ["-d", str(read_delay_us)]
        if chunk:
            argv += ["-c", str(chunk)]
        if rcvbuf:
            argv += ["-r", str(rcvbuf)]
        if greeting is not None:
            argv += ["-g", greeting]
        if close_after_ms is not None:
            argv += ["-x", str(close_after_ms)]
        sink = Sink(self.popen(argv), port)
        self.sinks.append(sink)
        sink.wait_ready()
        return sink

    # -- observing the kernel --
    def sockets(self, state: str, dport: int | None = None) -> list[str]:
        argv = ["ss", "-Htan", "state", state]
        if dport is not None:
            argv += [f"( dport = :{dport} )"]
        out = self.run(argv, check=True).stdout
        return [l for l in out.splitlines() if l.strip()]

    def time_wait(self, dport: int | None = None) -> list[str]:
        return self.sockets("time-wait", dport)

    def time_wait_count(self, dport: int | None = None) -> int:
        return len(self.time_wait(dport))

    def time_wait_peers(self) -> list[str]:
        """The remote address:port of every TIME_WAIT entry ("127.0.0.1:5000",
        "[::1]:5000")."""
        return [line.split()[-1] for line in self.time_wait()]


@pytest.fixture
def make_netns():
    """make_netns(port_range=(lo, hi)) -> a fresh Netns; all of them are
    deleted, with every process in them, when the test ends."""
    _require_root()
    made: list[Netns] = []

    def make(port_range: tuple[int, int] = DEFAULT_PORT_RANGE) -> Netns:
        ns = Netns(name=f"tcpfix-{secrets.token_hex(4)}", port_range=port_range)
        made.append(ns)
        ns.setup()
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.teardown()


@pytest.fixture
def netns(make_netns) -> Netns:
    """A namespace with the default 20-port range."""
    return make_netns()


@pytest.fixture
def stats_dir(tmp_path: Path) -> Path:
    d = tmp_path / "stats"
    d.mkdir()
    return d


# The fixtures of the `tcpfix attach` tests (the static Go client, test
# cgroups, attach itself), defined beside their helpers.
from attach_env import attach_cli, go_client, make_cgroup  # noqa: E402,F401
