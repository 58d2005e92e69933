"""Incident 001's environment for the storm tests: a throw-away MariaDB server
inside a test's network namespace, unmodified sysbench pointed at it, and the
few observations the tests make of a reconnect storm (sockets in CLOSE_WAIT,
a process's CPU time, whether a `mariadb` CLI can still connect).

Nothing here skips: a server that does not start, a missing sysbench or a
failed fetch of the bullseye client library raises, and the test fails.

The server (`mariadb_server(ns, workdir)`):
  * its own datadir under `workdir`, made by mariadb-install-db, root with
    an empty password (--auth-root-authentication-method=normal);
  * mariadbd --no-defaults (nothing of /etc/mysql is read) listening on
    127.0.0.1:3306 *of the namespace*, and on a unix socket in `workdir`;
  * max_connections 50 and MariaDB's default connect_timeout of 10 s (the
    incident's 1159 timeout);
  * a database and user `sbtest`/`sbtest`, and an oltp_read_only table set
    prepared with sysbench (1 table, 1000 rows).
The admin session (processlist, KILL) goes over the unix socket: unix
sockets are not network-namespaced and use no ephemeral port, so it works
while the namespace's ports are exhausted. It does not work while leaked
connections hold every slot: MariaDB admits max_connections + 1 connections
at accept time, before it knows who connects, so the admin's extra slot goes
to a leaked connection too (1040 over the socket as well). The tests KILL
before the storm and look at the server only through `ss` during it.
On exit the server is shut down (mariadb-admin, then SIGTERM, then SIGKILL)
and its directory removed, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO / "scripts" / "fetch-bullseye-mariadb.sh"
BULLSEYE_CACHE = Path(os.environ.get("TCPFIX_BULLSEYE_DIR", str(REPO / "build" / "bullseye-mariadb")))

SYSBENCH = "/usr/bin/sysbench"
MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
CLIENT = "/usr/bin/mariadb"
ADMIN = "/usr/bin/mariadb-admin"

SB_USER = "sbtest"
SB_PASSWORD = "sbtest"
SB_DB = "sbtest"

CLK_TCK = os.sysconf("SC_CLK_TCK")


class StormEnvError(RuntimeError):
    """The environment could not be set up (not a test failure of tcpfix)."""


def _require(path: str, package: str) -> str:
    if not os.access(path, os.X_OK):
        raise StormEnvError(f"{path} not found: apt-get install -y {package}")
    return path


def _ns_name(ns) -> str:
    return ns if isinstance(ns, str) else ns.name


def in_ns(ns, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", _ns_name(ns), *map(str, argv)]


def raise_nofile(limit: int = 20000):
    """A preexec_fn: RLIMIT_NOFILE soft (and, if below, hard) limit to
    `limit` for the child; a leaking client needs as many descriptors as the
    port range has ports, and more."""

    def apply() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        hard = max(hard, limit) if os.geteuid() == 0 else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))

    return apply


# -- the bullseye client library ---------------------------------------------------------------

def bullseye_libdir() -> Path:
    """The directory holding Debian 11's libmariadb.so.3 (Connector/C 3.1)
    and libssl/libcrypto 1.1, fetched on first use by
    scripts/fetch-bullseye-mariadb.sh (needs Debian's archive the first
    time; cached under build/bullseye-mariadb after)."""
    r = subprocess.run(["sh", str(FETCH_SCRIPT), str(BULLSEYE_CACHE)], capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        raise StormEnvError(f"{FETCH_SCRIPT} failed (exit {r.returncode}):\n{r.stderr}")
    libdir = Path(r.stdout.strip().splitlines()[-1])
    if not (libdir / "libmariadb.so.3").is_file():
        raise StormEnvError(f"{FETCH_SCRIPT} printed {libdir}, which has no libmariadb.so.3")
    return libdir


def connector_version(libdir: Path | None) -> str:
    """Connector/C version string inside a libmariadb.so.3 ("3.1.29")."""
    path = (libdir / "libmariadb.so.3") if libdir else Path("/lib/x86_64-linux-gnu/libmariadb.so.3")
    data = path.read_bytes()
    found = re.findall(rb"\x00(3\.\d+\.\d+)\x00", data)
    return found[0].decode() if found else "?"


# -- the server ---------------------------------------------------------------------------------

@dataclass
class MariaDB:
    ns: str
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 3306
    max_connections: int = 50
    proc: subprocess.Popen | None = None
    log_path: Path = field(default=Path())

    @property
    def socket(self) -> Path:
        return self.workdir / "mysqld.sock"

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    # -- admin over the unix socket (no port needed) --
    def sql(self, query: str, timeout: float = 15, check: bool = True) -> str:
        """Runs query as root over the unix socket; returns the tab-separated
        rows (no header)."""
        r = subprocess.run(in_ns(self.ns, [CLIENT, "--no-defaults", "-uroot", f"--socket={self.socket}",
                                           "-N", "-B", "-e", query]),
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise StormEnvError(f"SQL failed ({query!r}): {r.stderr.strip()}")
        return r.stdout

    def session_ids(self, user: str = SB_USER) -> list[int]:
        out = self.sql("SELECT id FROM information_schema.processlist "
                       f"WHERE user='{user}' AND command <> 'Killed'")
        return [int(x) for x in out.split()]

    def kill_sessions(self, user: str = SB_USER) -> list[int]:
        """KILLs every session of `user`, all in one client session (--force:
        a session that is already gone does not stop the others' KILL).
        Returns the ids."""
        ids = self.session_ids(user)
        if ids:
            subprocess.run(in_ns(self.ns, [CLIENT, "--no-defaults", "-uroot", f"--socket={self.socket}",
                                           "--force", "-e", " ".join(f"KILL {i};" for i in ids)]),
                           capture_output=True, text=True, timeout=15)
        return ids

    def status(self, name: str) -> int:
        out = self.sql(f"SHOW GLOBAL STATUS LIKE '{name}'")
        return int(out.split()[1]) if out.split() else -1

    def error_log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no error log: {e})"

    # -- a TCP client from the namespace, as a user would run it --
    def cli_connect(self, timeout: float = 8) -> "CliResult":
        """One `mariadb` CLI connect over TCP from the namespace (no preload),
        as sbtest, running `SELECT 1`."""
        argv = [CLIENT, "--no-defaults", f"-h{self.host}", f"-P{self.port}", f"-u{SB_USER}",
                f"-p{SB_PASSWORD}", "--connect-timeout=5", "-N", "-B", "-e", "SELECT 1"]
        try:
            r = subprocess.run(in_ns(self.ns, argv), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return CliResult("timeout", "CLI did not finish in time")
        return CliResult.classify(r.returncode, r.stdout, r.stderr)

    def sysbench_args(self, tables: int = 1, table_size: int = 1000) -> list[str]:
        return ["--db-driver=mysql", f"--mysql-host={self.host}", f"--mysql-port={self.port}",
                f"--mysql-user={SB_USER}", f"--mysql-password={SB_PASSWORD}", f"--mysql-db={SB_DB}",
                f"--tables={tables}", f"--table-size={table_size}"]


@dataclass
class CliResult:
    """What a `mariadb` CLI connect came to: ok, eaddrnotavail (the
    incident's `ERROR 2002 ... (99)`), too_many (error 1040, the server's
    slots are full; with TLS negotiation it arrives inside a 2002 message),
    timeout or other."""

    kind: str
    message: str

    @classmethod
    def classify(cls, rc: int, stdout: str, stderr: str) -> "CliResult":
        msg = (stderr.strip() or stdout.strip())[-300:]
        if rc == 0 and stdout.strip() == "1":
            return cls("ok", "")
        if "(99)" in stderr or "Cannot assign requested address" in stderr:
            return cls("eaddrnotavail", msg)
        if "1040" in stderr or "Too many connections" in stderr:
            return cls("too_many", msg)
        return cls("other", msg)


def _run(argv: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise StormEnvError(f"{what} failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def _stop(server: MariaDB) -> None:
    p = server.proc
    if p is None or p.poll() is not None:
        return
    # mariadb-admin shutdown first; it fails while leaked connections hold
    # every slot (the admin's extra slot included), then signals do it.
    shutdown_ok = False
    with contextlib.suppress(Exception):
        shutdown_ok = subprocess.run(
            in_ns(server.ns, [ADMIN, "--no-defaults", "-uroot", f"--socket={server.socket}",
                              "shutdown"]), capture_output=True, timeout=15).returncode == 0
    for sig, wait in ((None, 15 if shutdown_ok else 0), (signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if sig is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def mariadb_server(ns, workdir: Path, max_connections: int = 50, port: int = 3306,
                   tables: int = 1, table_size: int = 1000, start_timeout: float = 60):
    """Starts a MariaDB server in namespace `ns` (a conftest Netns or its
    name) and yields a MariaDB. See the module docstring."""
    for path, pkg in ((MARIADBD, "mariadb-server"), (INSTALL_DB, "mariadb-server"),
                      (CLIENT, "mariadb-client"), (ADMIN, "mariadb-client"), (SYSBENCH, "sysbench")):
        _require(path, pkg)
    workdir = Path(workdir) / "mariadb"
    server = MariaDB(ns=_ns_name(ns), workdir=workdir, port=port, max_connections=max_connections)
    server.log_path = workdir / "error.log"
    try:
        workdir.mkdir(parents=True, exist_ok=False)
        if len(str(server.socket)) > 100:
            raise StormEnvError(f"unix socket path too long for sun_path: {server.socket}")
        _run([INSTALL_DB, "--no-defaults", f"--datadir={server.datadir}", "--user=root",
              "--auth-root-authentication-method=normal", "--skip-test-db",
              "--skip-name-resolve"], "mariadb-install-db", timeout=120)
        argv = [MARIADBD, "--no-defaults", "--user=root", f"--datadir={server.datadir}",
                f"--socket={server.socket}", f"--port={port}", "--bind-address=127.0.0.1",
                f"--pid-file={workdir / 'mysqld.pid'}", f"--log-error={server.log_path}",
                f"--max-connections={max_connections}", "--connect-timeout=10",
                "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
                "--performance-schema=OFF", "--skip-ssl"]
        server.proc = subprocess.Popen(in_ns(ns, argv), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + start_timeout
        while True:
            if server.proc.poll() is not None:
                raise StormEnvError(f"mariadbd exited with {server.proc.returncode}:\n"
                                    f"{server.error_log_tail()}")
            ping = subprocess.run(in_ns(ns, [ADMIN, "--no-defaults", "-uroot",
                                             f"--socket={server.socket}", "ping"]),
                                  capture_output=True, text=True, timeout=10)
            if ping.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise StormEnvError(f"mariadbd did not answer within {start_timeout} s:\n"
                                    f"{server.error_log_tail()}")
            time.sleep(0.2)
        server.sql(f"CREATE DATABASE {SB_DB}; "
                   f"CREATE USER '{SB_USER}'@'%' IDENTIFIED BY '{SB_PASSWORD}'; "
                   f"GRANT ALL ON {SB_DB}.* TO '{SB_USER}'@'%';")
        _run(in_ns(ns, [SYSBENCH, *server.sysbench_args(tables, table_size), "oltp_read_only",
                        "prepare"]), "sysbench prepare", timeout=120)
        cli = server.cli_connect()
        if cli.kind != "ok":
            raise StormEnvError(f"mariadb CLI cannot connect over TCP: {cli.message}")
        yield server
    finally:
        _stop(server)
        shutil.rmtree(workdir, ignore_errors=True)


# -- sysbench ----------------------------------------------------------------------------------

def sysbench_run_argv(server: MariaDB, threads: int = 2, seconds: int = 600) -> list[str]:
    """sysbench oltp_read_only run as in the incident (--mysql-ignore-errors=all,
    reports every second). `seconds` only bounds a healthy run: a sysbench
    stuck in its reconnect loop never looks at the clock again, so the test
    must end it itself."""
    return [SYSBENCH, *server.sysbench_args(), f"--threads={threads}", f"--time={seconds}",
            "--report-interval=1", "--db-ps-mode=disable", "--skip-trx=on",
            "--mysql-ignore-errors=all", "oltp_read_only", "run"]


REPORT = re.compile(r"^\[\s*(\d+)s \] thds: \d+ tps: ([\d.]+) .* reconn/s: ([\d.]+)")


def sysbench_reports(output: str) -> list[tuple[int, float, float]]:
    """(second, tps, reconnects/s) of every interim report line."""
    out = []
    for line in output.splitlines():
        m = REPORT.match(line.strip())
        if m:
            out.append((int(m.group(1)), float(m.group(2)), float(m.group(3))))
    return out


# -- observations ------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of process pid (all its threads) in seconds, from
    /proc/PID/stat; raises if the process is gone."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def tcp_count(ns, state: str | None = None, dport: int | None = None,
              exclude: str | None = None) -> int:
    """Number of TCP sockets in ns (in `state`, to `dport`), from `ss -Htan`.
    No state means every state ss lists (all but CLOSED); `exclude` leaves
    one state out ("time-wait": sockets a process still holds)."""
    argv = ["ss", "-Htan"]
    if state:
        argv += ["state", state]
    if exclude:
        argv += ["exclude", exclude]
    if dport is not None:
        argv += [f"( dport = :{dport} )"]
    r = subprocess.run(in_ns(ns, argv), capture_output=True, text=True, timeout=20, check=True)
    return sum(1 for line in r.stdout.splitlines() if line.strip())


def close_wait_recvq(ns, dport: int) -> list[int]:
    """Recv-Q (unread bytes) of each CLOSE_WAIT socket to dport."""
    r = subprocess.run(in_ns(ns, ["ss", "-Htan", "state", "close-wait", f"( dport = :{dport} )"]),
                       capture_output=True, text=True, timeout=20, check=True)
    return [int(line.split()[0]) for line in r.stdout.splitlines() if line.strip()]


def summary_fields(stdout: str, keys: set[str]) -> dict[str, int]:
    """The last `k=v k=v` line of stdout whose keys are exactly `keys`."""
    for line in reversed(stdout.strip().splitlines()):
        parts = line.split()
        if parts and all("=" in p for p in parts):
            fields = dict(p.split("=", 1) for p in parts)
            if set(fields) == keys:
                return {k: int(v) for k, v in fields.items()}
    raise AssertionError(f"no summary line with keys {sorted(keys)} in:\n{stdout[-3000:]}")


def leak_client_summary(stdout: str) -> dict[str, int]:
    """leak_client's two closing lines, merged."""
    out = summary_fields(stdout, {"attempts", "connected", "eaddrnotavail", "other"})
    out.update(summary_fields(stdout, {"first_eaddrnotavail_ms", "cpu_ms", "fds_leaked", "elapsed_ms"}))
    return out


class Drain:
    """Reads a Popen's stdout and stderr (text pipes) into strings on
    background threads, so a chatty process never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen):
        import threading

        self.proc = proc
        self._out: list[str] = []
        self._err: list[str] = []
        self._threads = []
        for stream, sink in ((proc.stdout, self._out), (proc.stderr, self._err)):
            if stream is None:
                continue
            t = threading.Thread(target=lambda s=stream, k=sink: k.extend(s), daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def stdout(self) -> str:
        return "".join(list(self._out))

    @property
    def stderr(self) -> str:
        return "".join(list(self._err))

    def join(self, timeout: float = 5) -> None:
        for t in self._threads:
            t.join(timeout)


def stop_process(p: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 5) -> int:
    """Ends a process this module's caller started (by its own pid only)."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    return p.returncode
