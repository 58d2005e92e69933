"""TCPFIX_CLOSE=rst on the JVM, whose sockets end by dup2(), not close().

The JDK's socket implementation up to Java 12 (PlainSocketImpl: every Java 8
and 11 client, JDBC drivers, HTTP clients; JDK 13-17 with
-Djdk.net.usePlainSocketImpl=true) ends a connection by dup2()ing a marker
descriptor over the socket, then closing the marker; NIO channels do the
same (preClose) when another thread is blocked on them. tcpfix applies the
policy to the socket dup2 replaces, as close() would.

Each test: 3 x the namespace's port range of short connections
(tests/programs/java/CloseClient.java: connect, write, close) against
sink_server. With tcpfix: every connection succeeds, the peer sees each end
with RST after every byte, no TIME_WAIT is left. Without: the range runs out.
JDK 17 is Debian 12's openjdk-17-jdk-headless; JDK 11 runs from a cached
Debian 11 userland (scripts/chroot.sh bullseye) with the library loaded into
its glibc 2.31. One compile of the client for the module (--release 11).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import LIB, REPO, tcpfix_env
from helpers import parse_summary, read_stats, settled_time_wait, show

PORT = 5000
RANGE = (40000, 40099)
SOURCE = REPO / "tests" / "programs" / "java" / "CloseClient.java"
JAVA17 = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"
JAVAC17 = "/usr/lib/jvm/java-17-openjdk-amd64/bin/javac"
JVM_FLAGS = ["-Xmx64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> Path:
    for tool in (JAVA17, JAVAC17):
        if not Path(tool).is_file():
            pytest.fail(f"{tool} not found: apt-get install -y openjdk-17-jdk-headless", pytrace=False)
    out = tmp_path_factory.mktemp("java-classes")
    r = subprocess.run([JAVAC17, "--release", "11", "-d", str(out), str(SOURCE)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, show(r)
    return out


def check_arms(ns, sink, run, mode: str, stats_glob) -> None:
    """The tcpfix arm, then the control arm, of one client in one namespace."""
    count = 3 * ns.range_size
    r = run(tcpfix=True, count=count)
    assert r.returncode == 0, show(r)
    assert parse_summary(r.stdout) == {"ok": count, "eaddrnotavail": 0, "other": 0}, show(r)
    ends = sink.wait_ends(count)
    wrong = [e for e in ends if e["end"] != "ECONNRESET" or e["bytes"] != 4]
    assert not wrong, f"{len(wrong)} of {count} did not arrive whole and end with RST: {wrong[:5]}"
    assert settled_time_wait(ns) == []
    (st,) = [read_stats(p) for p in stats_glob()]
    assert st["closes_rst"] == count, st
    # NIO takes the dup2 path only when the reader already sits in read();
    # a reader not yet there gets a plain close (RST all the same).
    want_dup2 = count if mode == "socket" else count // 2
    assert st["closes_rst_dup2"] >= want_dup2, st

    r = run(tcpfix=False, count=count)
    assert r.returncode == 0, show(r)
    assert parse_summary(r.stdout) == {"ok": ns.range_size, "eaddrnotavail": count - ns.range_size,
                                       "other": 0}, show(r)
    assert len(settled_time_wait(ns, PORT)) == ns.range_size


@pytest.mark.parametrize("mode", ["socket", "nio-blocked"])
def test_jdk17_connections_closed_by_dup2_end_with_rst(make_netns, lib, program, classes, stats_dir, mode):
    ns = make_netns(RANGE)
    sink = ns.start_sink(program("sink_server"), PORT, timeout_ms=120000)
    flags = ["-Djdk.net.usePlainSocketImpl=true"] if mode == "socket" else []

    def run(tcpfix: bool, count: int):
        env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "jvm-%p.json")) if tcpfix else {}
        argv = [JAVA17, *JVM_FLAGS, *flags, "-cp", str(classes), "CloseClient", mode, "127.0.0.1", str(PORT),
                str(count)]
        return ns.run(argv, env=env, timeout=120)

    check_arms(ns, sink, run, mode, lambda: sorted(stats_dir.glob("jvm-*.json")))


def test_jdk11_from_debian11_connections_closed_by_dup2_end_with_rst(make_netns, program, classes, tmp_path):
    """OpenJDK 11 (PlainSocketImpl by default) in a Debian 11 userland: the
    library built here loaded by glibc 2.31. The userland is a cached
    debootstrap root (scripts/chroot.sh); the client, the library and the
    stats live in a scratch directory under its /tmp, removed afterwards."""
    chroot_sh = REPO / "scripts" / "chroot.sh"
    assert chroot_sh.is_file(), f"{chroot_sh} missing (the Debian userlands of the portability work)"
    r = subprocess.run(["bash", str(chroot_sh), "bullseye"], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, show(r)
    root = Path(r.stdout.strip().splitlines()[-1])
    java11 = "/usr/lib/jvm/java-11-openjdk-amd64/bin/java"
    assert (root / java11.lstrip("/")).is_file(), f"no OpenJDK 11 in {root}"

    scratch = Path(str(root) + f"/tmp/tcpfix-close-{tmp_path.name}")
    scratch.mkdir()
    try:
        shutil.copy(LIB, scratch / "libtcpfix.so")
        shutil.copy(classes / "CloseClient.class", scratch / "CloseClient.class")
        inside = "/" + str(scratch.relative_to(root))
        ns = make_netns(RANGE)
        sink = ns.start_sink(program("sink_server"), PORT, timeout_ms=120000)

        def run(tcpfix: bool, count: int):
            env = [f"LD_PRELOAD={inside}/libtcpfix.so", "TCPFIX_CLOSE=rst",
                   f"TCPFIX_STATS={inside}/jvm-%p.json"] if tcpfix else []
            # A mount namespace of its own: /proc for the JVM inside the root,
            # gone with the process.
            script = (f'mount -t proc proc "{root}/proc" && exec chroot "{root}" /usr/bin/env -i '
                      f'PATH=/usr/bin:/bin {" ".join(env)} {java11} {" ".join(JVM_FLAGS)} -cp {inside} '
                      f'CloseClient socket 127.0.0.1 {PORT} {count}')
            return ns.run(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script], timeout=120)

        check_arms(ns, sink, run, "socket", lambda: sorted(scratch.glob("jvm-*.json")))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
