"""What the `tcpfix attach` tests share: the static Go client, cgroups the
tests make, and the daemon run inside a test's network namespace.

`ip netns exec` remounts /sys for the namespace, which hides the cgroup2
mount; everything here enters the namespace with `nsenter --net=` instead,
so the daemon, the clients and the test all see the same cgroups.

The Go client (tests/programs/go_client.go) is built static (CGO_ENABLED=0)
by Debian's golang-go, once per source and Go version, into
/var/tmp/tcpfix-go/<hash>/ (built in a temporary directory and renamed into
place, so concurrent runs never see half a binary), with the build cache in
/var/tmp/tcpfix-go/cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import BASE_ENV, REPO, Netns

GO_SOURCE = REPO / "tests" / "programs" / "go_client.go"
GO_CACHE_ROOT = Path("/var/tmp/tcpfix-go")


def cgroup2_mount() -> Path:
    """The cgroup2 mount point, from /proc/self/mountinfo (never assumed)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        if tail.split()[:1] == ["cgroup2"] and head.split()[3] == "/":
            return Path(head.split()[4])
    pytest.fail("cgroup v2 is not mounted: tcpfix attach cannot be tested", pytrace=False)


def build_go_client() -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.fail("Debian's golang-go is needed to build tests/programs/go_client.go "
                    "(scripts/setup-deps.sh installs it)", pytrace=False)
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(GO_SOURCE.read_bytes() + version.encode()).hexdigest()[:16]
    target = GO_CACHE_ROOT / digest / "go_client"
    if target.is_file():
        return target
    GO_CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=GO_CACHE_ROOT))
    try:
        env = {**BASE_ENV, "CGO_ENABLED": "0", "GOCACHE": str(GO_CACHE_ROOT / "cache"),
               "GOPATH": str(GO_CACHE_ROOT / "gopath"), "GOFLAGS": "-trimpath"}
        r = subprocess.run([go, "build", "-ldflags=-s", "-o", str(tmp / "go_client"),
                            str(GO_SOURCE)], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, f"go build failed:\n{r.stderr}"
        try:
            (tmp / "go_client").rename(tmp / "ready")
            target.parent.mkdir(exist_ok=True)
            os.rename(tmp / "ready", target)  # atomic; a concurrent build may have won
        except OSError:
            if not target.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def go_client() -> str:
    path = build_go_client()
    kind = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True).stdout
    assert "statically linked" in kind, f"go_client is not static: {kind}"
    return str(path)


@pytest.fixture(scope="session")
def attach_cli(cli) -> Path:
    r = subprocess.run([str(cli), "attach", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--cgroup" in r.stdout, (
        f"this tcpfix has no attach (built with -DTCPFIX_ATTACH=OFF?):\n{r.stdout}{r.stderr}")
    return cli


class Cgroup:
    """A cgroup v2 directory the test made; removed (its processes killed)
    at the end."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir()

    @property
    def procs(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def remove(self) -> None:
        for sub in sorted((p for p in self.path.rglob("*") if p.is_dir()), reverse=True):
            Cgroup._kill_and_rmdir(sub)
        Cgroup._kill_and_rmdir(self.path)

    @staticmethod
    def _kill_and_rmdir(path: Path) -> None:
        for _ in range(100):
            try:
                pids = (path / "cgroup.procs").read_text().split()
            except FileNotFoundError:
                return
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


@pytest.fixture
def make_cgroup():
    """make_cgroup() -> a fresh Cgroup under the cgroup2 mount; all removed
    at the end, pass or fail."""
    made: list[Cgroup] = []
    mount = cgroup2_mount()

    def make(name: str | None = None, parent: Path | None = None) -> Cgroup:
        cg = Cgroup((parent or mount) / (name or f"tcpfix-test-{secrets.token_hex(4)}"))
        made.append(cg)
        return cg

    try:
        yield make
    finally:
        for cg in reversed(made):
            cg.remove()


def nsenter_argv(ns: Netns, argv: list, env: dict | None = None,
                 cgroup: Cgroup | None = None) -> list[str]:
    """argv in the namespace (nsenter keeps /sys, so the cgroup2 mount stays
    visible), with a clean environment, and first moved into `cgroup`."""
    pairs = [f"{k}={v}" for k, v in {**BASE_ENV, **(env or {})}.items()]
    argv = [str(a) for a in argv]
    if cgroup is not None:
        argv = ["/bin/sh", "-c", f'echo $$ > "{cgroup.path}/cgroup.procs" && exec "$@"', "sh",
                *argv]
    return ["nsenter", f"--net=/run/netns/{ns.name}", "/usr/bin/env", "-i", *pairs, *argv]


def run_in(ns: Netns, argv: list, env: dict | None = None, cgroup: Cgroup | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(nsenter_argv(ns, argv, env, cgroup), capture_output=True, text=True,
                          timeout=timeout)


def popen_in(ns: Netns, argv: list, env: dict | None = None, cgroup: Cgroup | None = None,
             **kwargs) -> subprocess.Popen:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    p = subprocess.Popen(nsenter_argv(ns, argv, env, cgroup), **kwargs)
    ns.procs.append(p)
    return p


def last_json(stdout: str) -> dict:
    lines = [l for l in stdout.strip().splitlines() if l.startswith("{")]
    assert lines, f"no JSON line in:\n{stdout}"
    return json.loads(lines[-1])


def go_run(ns: Netns, go_client: str, *args, cgroup: Cgroup | None = None,
           timeout: float = 120) -> dict:
    r = run_in(ns, [go_client, *args], cgroup=cgroup, timeout=timeout)
    assert r.returncode == 0, f"go_client {args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return last_json(r.stdout)


class Attach:
    """`tcpfix attach ... --json --log info` running in a namespace; the
    stderr/stdout readers keep everything it said."""

    def __init__(self, ns: Netns, cli: Path, args: list[str], env: dict | None = None,
                 cgroup: Cgroup | None = None, ready: bool = True, timeout: float = 20):
        self.argv = [str(cli), "attach", "--json", "--log", "info", *args]
        self.proc = popen_in(ns, self.argv, env=env, cgroup=cgroup)
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()
        if ready:
            self.wait_event("attached", timeout)

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def events(self) -> list[dict]:
        with self._cond:
            out = []
            for line in self.out:
                if line.startswith('{"event"'):
                    out.append(json.loads(line))
            return out

    def text(self) -> str:
        with self._cond:
            return "".join(self.err)

    def wait_event(self, name: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events_unlocked():
                    if e.get("event") == name:
                        return e
                if self.proc.poll() is not None and all(not t.is_alive() for t in self._threads):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
        raise AssertionError(f"tcpfix attach: no {name!r} event (exit {self.proc.poll()}):\n"
                             f"{''.join(self.out)}{''.join(self.err)}")

    def events_unlocked(self) -> list[dict]:
        return [json.loads(l) for l in self.out if l.startswith('{"event"')]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signals the daemon and waits; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc


def bpf_attached(cgroup: Path) -> list[str]:
    """What `bpftool cgroup show` lists for the cgroup (program lines)."""
    r = subprocess.run(["bpftool", "cgroup", "show", str(cgroup)], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return [l for l in r.stdout.splitlines()[1:] if l.strip()]


def tcpfix_programs() -> list[str]:
    """Loaded BPF programs whose name is one of attach's (`bpftool prog list`)."""
    r = subprocess.run(["bpftool", "prog", "list"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return [l for l in r.stdout.splitlines() if " name tcpfix_" in l]


def tcpfix_links() -> list[str]:
    r = subprocess.run(["bpftool", "link", "list"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    progs = {l.split()[0].rstrip(":") for l in tcpfix_programs()}
    return [l for l in r.stdout.splitlines() if "prog " in l and
            l.split("prog ")[1].split()[0] in progs]


def sockets(ns: Netns, state: str, extra: str = "") -> list[str]:
    r = run_in(ns, ["ss", "-Htan", "state", state, *([extra] if extra else [])], timeout=10)
    assert r.returncode == 0, r.stderr
    return [l for l in r.stdout.splitlines() if l.strip()]


def start_server(ns: Netns, program, port: int, **kw):
    """The sink_server in the namespace, via nsenter (see Netns.start_sink)."""
    from conftest import Sink
    argv = [program("sink_server"), "-a", kw.get("addr", "0.0.0.0"), "-p", str(port),
            "-t", str(kw.get("timeout_ms", 60000))]
    if kw.get("greeting") is not None:
        argv += ["-g", kw["greeting"]]
    if kw.get("close_after_ms") is not None:
        argv += ["-x", str(kw["close_after_ms"])]
    sink = Sink(popen_in(ns, argv), port)
    ns.sinks.append(sink)
    sink.wait_ready()
    return sink


__all__ = [
    "Attach", "Cgroup", "bpf_attached", "cgroup2_mount", "go_client", "go_run", "last_json",
    "make_cgroup", "nsenter_argv", "popen_in", "run_in", "sockets", "start_server",
    "tcpfix_links", "tcpfix_programs", "attach_cli",
]
