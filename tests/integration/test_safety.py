"""Safety of the library in the host process: threads in a tight port space,
a second preload next to tcpfix, set-user-ID (secure-execution) processes,
and the files tcpfix creates (0600, no symlink followed, replaced
atomically).

The threaded, fork, signal, nothing-lost and soak stress programs themselves
run under ctest (tests/stress, `ctest -R stress`), and under the sanitizers
in scripts/sanitize.sh; this file runs what needs root, a namespace or
another user.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import BASE_ENV, BUILD, tcpfix_env
from helpers import json_lines, read_stats, settled_time_wait, show

STRESS = BUILD / "tests" / "stress"
PORT = 5432
NOBODY = 65534

EVERY_POLICY = {
    "TCPFIX_CLOSE": "rst",
    "TCPFIX_CONNECT_TIMEOUT": "2s",
    "TCPFIX_CONNECT_RETRIES": "2",
    "TCPFIX_SOURCE_ADDRS": "127.0.0.1,127.0.0.2,127.0.0.3",
    "TCPFIX_PORT_RANGE": "1024-65535",
    "TCPFIX_RECONNECT_BACKOFF": "1ms:4ms",
    "TCPFIX_CONNECT_RATE": "1000000/s",
    "TCPFIX_REAP_CLOSE_WAIT": "200ms",
}


@pytest.fixture(scope="session")
def stress_bin():
    """stress_bin("tcpfix_stress") -> path of a built tests/stress/ file."""

    def find(name: str) -> Path:
        path = STRESS / name
        if not path.is_file():
            pytest.fail(f"{path} not found: build first (cmake --build {BUILD})", pytrace=False)
        return path

    return find


def stress_summary(stdout: str) -> dict[str, str]:
    """The `ports: data=P closing=Q refused=R` line of tcpfix_stress threads."""
    m = re.search(r"^ports: data=(\d+) closing=(\d+) refused=(\d+)", stdout, re.M)
    assert m, stdout
    return {"data": m[1], "closing": m[2], "refused": m[3]}


# -- threads in a port space that a single TIME_WAIT leak would exhaust ----------------------

def test_thread_stress_in_a_tight_port_space(make_netns, lib, stress_bin):
    """16 threads x 2,000 cycles of every descriptor edge case under every
    policy at once, in a namespace with TIME_WAIT reuse off and 100 ephemeral
    ports (x3 source addresses): ~34,000 connects succeed only if every
    active close is an RST. The stress program checks its own side, the
    peer's view and tcpfix's counts (its supervisor fails on any mismatch,
    crash or hang); here `ss` must show no client-side TIME_WAIT left."""
    ns = make_netns((40000, 40099))
    env = {"LD_PRELOAD": str(lib), **EVERY_POLICY}
    r = ns.run([stress_bin("tcpfix_stress"), "--timeout", "240", "threads", "--threads", "16", "--cycles",
                "2000"], env=env, timeout=300)
    assert r.returncode == 0, show(r)
    assert "PASS threads" in r.stdout, show(r)
    ports = stress_summary(r.stdout)
    listeners = {ports["data"], ports["closing"], ports["refused"]}
    client_side = [line for line in settled_time_wait(ns)
                   if line.split()[2].rsplit(":", 1)[1] not in listeners]
    assert client_side == [], f"client connections left in TIME_WAIT: {client_side[:10]}"


def test_thread_stress_without_tcpfix_runs_out_of_ports(make_netns, stress_bin):
    """The control arm: the same program without the library, in the same
    kind of namespace, exhausts the ports (so the test above proves something)."""
    ns = make_netns((40000, 40099))
    r = ns.run([stress_bin("tcpfix_stress"), "--timeout", "120", "threads", "--threads", "4", "--cycles",
                "1000"], timeout=180)
    assert r.returncode != 0, show(r)
    assert "Cannot assign requested address" in r.stderr, show(r)


# -- a second preload next to tcpfix ------------------------------------------------------------

def counter_lines(path: Path) -> list[dict]:
    assert path.exists(), f"the close counter wrote nothing to {path}"
    return json_lines(path.read_text())


@pytest.mark.parametrize("order", ["tcpfix-run-prepends", "counter-first"])
def test_another_preload_sees_every_call_too(netns, lib, cli, program, stress_bin, stats_dir, order):
    """A program whose LD_PRELOAD already holds another library (one that
    counts close() calls and uses sockets in its constructor, before tcpfix's
    constructor has run): started with `tcpfix run` (which prepends tcpfix),
    or with the other library first. Both libraries must see every call:
    the counter counts the probes' closes, tcpfix resets every probe."""
    probes = 20
    counter = stress_bin("libtcpfix_close_counter.so")
    out = stats_dir / "counter.jsonl"
    sink = netns.start_sink(program("sink_server"), PORT)
    probe = [program("port_probe"), "127.0.0.1", str(PORT), str(probes)]
    base = {"CLOSE_COUNTER_OUT": str(out)}
    stats = str(stats_dir / "tcpfix-%p.json")
    if order == "tcpfix-run-prepends":
        argv = [str(cli), "run", "--close", "rst", "--stats", stats, "--", *probe]
        env = {**base, "LD_PRELOAD": str(counter)}
        want_preload = f"{os.path.realpath(lib)}:{counter}"
    else:
        argv = probe
        env = {**base, "LD_PRELOAD": f"{counter} {lib}", "TCPFIX_CLOSE": "rst", "TCPFIX_STATS": stats}
        want_preload = f"{counter} {lib}"
    r = netns.run(argv, env=env, timeout=30)
    assert r.returncode == 0, show(r)
    assert r.stdout.strip().splitlines()[-1] == f"ok={probes} eaddrnotavail=0 other=0", show(r)

    # The probe process is the one that made sockets (tcpfix run execs it: same pid).
    lines = [l for l in counter_lines(out) if l["sockets"] > 0]
    assert len(lines) == 1, lines
    seen = lines[0]
    assert seen["ld_preload"] == want_preload, seen
    assert seen["early"] == "ok", f"sockets in a constructor before tcpfix's: {seen}"
    assert seen["closes"] >= probes and seen["sockets"] >= probes, seen

    st = read_stats(stats_dir / f"tcpfix-{seen['pid']}.json")
    assert st["connects"] == probes and st["closes_rst"] == probes, st
    ends = sink.wait_ends(probes)
    assert [e["end"] for e in ends] == ["ECONNRESET"] * probes, ends


# -- set-user-ID: secure-execution mode ---------------------------------------------------------

@pytest.fixture
def world_dir():
    """A scratch directory under /tmp that user nobody can enter."""
    d = Path(tempfile.mkdtemp(prefix="tcpfix-safety-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def trusted_lib(lib):
    """libtcpfix.so copied, set-user-ID, into the system library directory:
    in secure-execution mode glibc preloads only such libraries, named
    without a slash. Removed afterwards."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    libdir = Path("/usr/lib") / multiarch
    name = f"libtcpfix-safety-{secrets.token_hex(4)}.so"
    path = libdir / name
    shutil.copyfile(lib, path)
    os.chown(path, 0, 0)
    path.chmod(0o4755)
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


def run_as_nobody(argv, env, cwd, timeout=20, umask=0o022):
    """Runs argv directly (no shell, no env(1): nothing else is preloaded) as
    uid/gid 65534 without supplementary groups."""
    return subprocess.run([str(a) for a in argv], env={**BASE_ENV, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, user=NOBODY, group=NOBODY, extra_groups=[], umask=umask)


def probe_result(r) -> dict:
    lines = json_lines(r.stdout)
    assert r.returncode == 0 and lines and "at_secure" in lines[-1], show(r)
    return lines[-1]


def test_secure_mode_ignores_log_and_stats_paths(world_dir, trusted_lib, stress_bin):
    """A set-user-ID-root copy of a client, run by an unprivileged user, is a
    secure-execution process (getauxval(AT_SECURE) = 1). tcpfix, preloaded
    from the trusted directory, still applies its policy (the peer sees the
    RST) but must not write where TCPFIX_LOG_FILE and TCPFIX_STATS point: it
    says so on stderr, and nothing appears there, even in a directory anyone
    may write to."""
    probe = world_dir / "probe-setuid"
    shutil.copyfile(stress_bin("tcpfix_secure_probe"), probe)
    os.chown(probe, 0, 0)
    probe.chmod(0o4755)
    out = world_dir / "out"
    out.mkdir()
    out.chmod(0o777)
    env = {"LD_PRELOAD": trusted_lib, "TCPFIX_CLOSE": "rst", "TCPFIX_LOG": "info",
           "TCPFIX_LOG_FILE": str(out / "tcpfix.log"), "TCPFIX_STATS": str(out / "stats-%p.json")}
    r = run_as_nobody([probe], env, world_dir)
    got = probe_result(r)
    assert got["at_secure"] == 1 and got["euid"] == 0 and got["ruid"] == NOBODY, got
    assert got["tcpfix_loaded"], f"glibc did not preload {trusted_lib} in secure mode: {show(r)}"
    assert got["peer_end"] == "ECONNRESET", f"tcpfix's policy was not applied: {got}"
    assert "TCPFIX_LOG_FILE ignored" in r.stderr, show(r)
    assert "TCPFIX_STATS ignored" in r.stderr, show(r)
    assert sorted(p.name for p in out.iterdir()) == [], "tcpfix wrote files in a secure process"


def test_not_secure_control_arm_writes_both_files(world_dir, lib, stress_bin):
    """The same client, not set-user-ID, run by the same user: not secure
    (AT_SECURE = 0), and both files appear, 0600 although the umask is 0."""
    probe = world_dir / "probe"
    shutil.copyfile(stress_bin("tcpfix_secure_probe"), probe)
    probe.chmod(0o755)
    libcopy = world_dir / "libtcpfix.so"
    shutil.copyfile(lib, libcopy)
    libcopy.chmod(0o755)
    out = world_dir / "out"
    out.mkdir()
    out.chmod(0o777)
    env = {"LD_PRELOAD": str(libcopy), "TCPFIX_CLOSE": "rst", "TCPFIX_LOG": "info",
           "TCPFIX_LOG_FILE": str(out / "tcpfix.log"), "TCPFIX_STATS": str(out / "stats-%p.json")}
    r = run_as_nobody([probe], env, world_dir, umask=0)
    got = probe_result(r)
    assert got["at_secure"] == 0 and got["peer_end"] == "ECONNRESET", got
    log = out / "tcpfix.log"
    stats_file = out / f"stats-{got['pid']}.json"
    assert log.exists() and stats_file.exists(), sorted(p.name for p in out.iterdir())
    for f in (log, stats_file):
        st = f.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, f"{f.name} has mode {oct(st.st_mode)} (umask 0)"
        assert st.st_uid == NOBODY, f"{f.name} owned by uid {st.st_uid}"


# -- the files tcpfix creates ------------------------------------------------------------------

def planted_victim(d: Path) -> Path:
    victim = d / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    return victim


def run_probe_as_root(stress_bin, env, cwd, wait_hook=None, timeout=20):
    """Runs the (plain) probe as root; with wait_hook, the probe first prints
    its pid and waits; wait_hook(pid) runs before it is let go."""
    argv = [str(stress_bin("tcpfix_secure_probe"))] + (["--wait"] if wait_hook else [])
    p = subprocess.Popen(argv, env={**BASE_ENV, **env}, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        if wait_hook:
            first = json.loads(p.stdout.readline())
            wait_hook(first["pid"])
            p.stdin.write("go\n")
            p.stdin.flush()
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def test_symlink_at_the_log_path_is_not_followed(world_dir, lib, stress_bin):
    """TCPFIX_LOG_FILE names a symlink someone planted toward another file:
    tcpfix (here as root) must not write through it. It logs to stderr
    instead, and says why."""
    victim = planted_victim(world_dir)
    log = world_dir / "tcpfix.log"
    log.symlink_to(victim)
    env = {"LD_PRELOAD": str(lib), "TCPFIX_CLOSE": "rst", "TCPFIX_LOG": "debug", "TCPFIX_LOG_FILE": str(log)}
    r = run_probe_as_root(stress_bin, env, world_dir)
    got = probe_result(r)
    assert got["peer_end"] == "ECONNRESET", got
    assert victim.read_text() == "precious\n", "tcpfix wrote through a symlink at TCPFIX_LOG_FILE"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert log.is_symlink()
    assert "TCPFIX_LOG_FILE" in r.stderr, show(r)


@pytest.mark.parametrize("where", ["temporary-name", "final-path"])
def test_symlink_at_the_stats_path_is_not_followed(world_dir, lib, stress_bin, where):
    """A symlink planted where tcpfix writes its stats (the temporary name
    `<path>.tmp.<pid>`, or the path itself) must not be followed: the target
    keeps its content, and the stats arrive whole at the path, as a regular
    file, with no temporary file left."""
    victim = planted_victim(world_dir)
    template = world_dir / "stats-%p.json"
    env = {"LD_PRELOAD": str(lib), "TCPFIX_CLOSE": "rst", "TCPFIX_STATS": str(template)}
    planted: list[Path] = []

    def plant(pid: int) -> None:
        final = world_dir / f"stats-{pid}.json"
        link = final if where == "final-path" else Path(f"{final}.tmp.{pid}")
        link.symlink_to(victim)
        planted.append(final)

    r = run_probe_as_root(stress_bin, env, world_dir, wait_hook=plant)
    got = probe_result(r)
    assert victim.read_text() == "precious\n", f"tcpfix wrote through a symlink at the stats {where}"
    final = planted[0]
    assert final.exists() and not final.is_symlink(), sorted(p.name for p in world_dir.iterdir())
    st = json.loads(final.read_text())
    assert st["pid"] == got["pid"] and st["closes_rst"] == 1, st
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    leftovers = [p.name for p in world_dir.iterdir() if ".tmp." in p.name]
    assert leftovers == [], leftovers


def test_stats_file_is_replaced_atomically_while_the_process_runs(netns, lib, program, stats_dir):
    """A reader polling the stats file while a prober runs for several
    seconds (tcpfix refreshes it every 2 s) never reads a partial file: every
    read parses, and each refresh is a new file renamed into place (a new
    inode), never the old one rewritten."""
    sink = netns.start_sink(program("sink_server"), PORT)
    path = stats_dir / "live.json"
    env = tcpfix_env(lib, close="rst", stats=str(path))
    probes = 2500
    proc = netns.popen([program("port_probe"), "127.0.0.1", str(PORT), str(probes), "2000"], env=env)
    reads, bad, inodes = 0, [], set()
    while proc.poll() is None:
        try:
            ino = os.stat(path).st_ino
            text = path.read_text()
        except FileNotFoundError:
            continue
        reads += 1
        inodes.add(ino)
        try:
            json.loads(text)
        except json.JSONDecodeError:
            bad.append(text[:200])
        time.sleep(0.0005)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    assert out.strip().splitlines()[-1] == f"ok={probes} eaddrnotavail=0 other=0", out
    assert not bad, f"{len(bad)} of {reads} reads saw a partial stats file: {bad[:3]}"
    final = read_stats(path)
    assert final["connects"] == probes, final
    inodes.add(os.stat(path).st_ino)
    assert len(inodes) >= 2, f"the stats file was never replaced while running ({reads} reads)"
    assert [p.name for p in stats_dir.iterdir() if ".tmp." in p.name] == []
    sink.wait_ends(probes, timeout=20)
