"""The descriptor table stays true: dup/dup2/dup3/fcntl(F_DUPFD*),
close_range/closefrom, syscall(SYS_close), fork (+exec), and descriptors
that are not TCP sockets at all. Each case runs one fd_exerciser scenario
under TCPFIX_CLOSE=rst in a namespace and checks what the PEER saw of each
connection (bytes, then EOF = FIN or ECONNRESET = RST) and what `ss` shows;
the exerciser checks its own side (return values, errno, data through the
descriptors that remain)."""

from __future__ import annotations

import pytest

from conftest import PYTHON, tcpfix_env
from helpers import MiB, json_lines, settled_time_wait, show, stats_of
from share_env import share_name  # noqa: F401

PORT = 5432
FD_RANGE = (40000, 40199)  # wide: ports are not reused between connections of one test


@pytest.fixture
def ns(make_netns):
    return make_netns(FD_RANGE)


def exercise(ns, program, scenario, *args, env=None, timeout=20):
    """Runs fd_exerciser; returns ({label: local port}, pid). Fails the test
    if one of the exerciser's own checks failed."""
    r = ns.run([program("fd_exerciser"), scenario, *map(str, args)], env=env, timeout=timeout)
    out = json_lines(r.stdout)
    bad = [o for o in out if o.get("ok") is False or "error" in o]
    assert r.returncode == 0 and not bad and out and out[-1] == {"result": "ok"}, show(r)
    conns = {o["conn"]: o["local_port"] for o in out if "conn" in o and "local_port" in o}
    return conns, out[0]["pid"]


def peer_view(sink, port, timeout=10.0) -> tuple[int, str, str]:
    e = sink.by_port(port, timeout=timeout)
    return e["bytes"], e["tail"], e["end"]


RST = "ECONNRESET"
EOF = "EOF"

# scenario, arguments, {connection: (bytes, tail, end) the peer must see}, TIME_WAIT entries left
CASES = [
    ("dup-close-orig", ["-m", "dup"], {"A": (5, "ALIVE", RST)}, 0),
    ("dup-close-orig", ["-m", "dup2"], {"A": (5, "ALIVE", RST)}, 0),
    ("dup-close-orig", ["-m", "dup3"], {"A": (5, "ALIVE", RST)}, 0),
    ("dup-close-orig", ["-m", "fcntl-dupfd"], {"A": (5, "ALIVE", RST)}, 0),
    ("dup-close-orig", ["-m", "fcntl-dupfd-cloexec"], {"A": (5, "ALIVE", RST)}, 0),
    # dup2/dup3 of a socket over its own copy: the replaced descriptor is not
    # the socket's last, so its implicit close only counts.
    ("dup-close-orig", ["-m", "dup2-over-copy"], {"A": (5, "ALIVE", RST)}, 0),
    ("dup-close-orig", ["-m", "dup3-over-copy"], {"A": (5, "ALIVE", RST)}, 0),
    # dup2/dup3 over a tracked socket closes that socket implicitly; the
    # library applies TCPFIX_CLOSE to it as close() would (the JDK ends its
    # sockets this way), so it ends with RST and leaves no TIME_WAIT, while
    # the table follows the descriptor to its new connection (or to the file).
    ("dup2-sock-over-sock", [], {"A": (5, "VIA-B", RST), "B": (0, "", RST)}, 0),
    ("dup2-file-over-sock", [], {"A": (0, "", RST), "C": (0, "", RST)}, 0),
    ("close-range", [], {c: (0, "", RST) for c in "ABCD"}, 0),
    ("closefrom", [], {c: (0, "", RST) for c in "ABCD"}, 0),
    ("syscall-close", [], {"A": (0, "", RST)}, 0),
    ("double-close", [], {"A": (0, "", RST)}, 0),
    # A socket inherited across fork() is closed gracefully (the other
    # process may still use it): FIN, and its TIME_WAIT entry stays.
    ("fork-child-close", [], {"A": (6, "PARENT", EOF)}, 1),
    ("fork-parent-close", [], {"A": (5, "CHILD", EOF)}, 1),
    ("fork-exec", [], {"A": (6, "PARENT", EOF), "B": (0, "", RST)}, 1),
]


def case_id(case):
    scenario, args = case[0], case[1]
    return scenario + ("" if not args else ":" + args[-1])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_scenario_under_rst(ns, lib, program, stats_dir, case):
    scenario, args, want, time_wait_left = case
    sink = ns.start_sink(program("sink_server"), PORT)
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "stats-%p.json"))
    conns, pid = exercise(ns, program, scenario, "127.0.0.1", PORT, *args, env=env)
    assert set(conns) == set(want), conns
    seen = {label: peer_view(sink, conns[label]) for label in want}
    assert seen == want, f"peer's view {seen}, expected {want}"
    left = len(settled_time_wait(ns))
    if time_wait_left == 0:
        assert left == 0
    else:
        # The FIN-ended connections: their TIME_WAIT entries stay.
        assert left == time_wait_left

    st = stats_of(stats_dir, pid)
    if scenario.startswith("fork"):
        assert st["closes_graceful_shared"] >= 1, st
    want_rst = sum(1 for _, _, end in want.values() if end == RST)
    assert st["closes_rst"] == want_rst, st
    if scenario == "dup-close-orig":
        # close(A), close(D), and the copy replaced by dup2/dup3 over it.
        assert st["closes"] == (3 if args[-1].endswith("-over-copy") else 2), st
        assert st["closes_rst_dup2"] == 0, st


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_scenario_unpreloaded_baseline(ns, program, case):
    """The same scenarios without the library: the exerciser's own checks
    pass, the data arrives, every connection ends with FIN. (Proves the
    scenarios test something, and what "unchanged" means.)"""
    scenario, args, want, _ = case
    sink = ns.start_sink(program("sink_server"), PORT)
    conns, _ = exercise(ns, program, scenario, "127.0.0.1", PORT, *args)
    for label, (nbytes, tail, _) in want.items():
        assert peer_view(sink, conns[label]) == (nbytes, tail, EOF), label


@pytest.mark.parametrize("method", ["dup", "fcntl-dupfd-cloexec"])
def test_dup_then_bulk_write_loses_nothing(ns, lib, program, method):
    """After close(original), the duplicate still owns a live connection, and
    the close of the original left nothing (no SO_LINGER {1,0}) on it: 8 MiB
    written through the duplicate and closed at once all reach a slow peer."""
    size = 8 * MiB
    sink = ns.start_sink(program("sink_server"), PORT, read_delay_us=500, chunk=65536,
                         rcvbuf=65536)
    conns, _ = exercise(ns, program, "dup-close-orig", "127.0.0.1", PORT, "-m", method,
                        "-b", size, env=tcpfix_env(lib, close="rst"), timeout=30)
    nbytes, _, end = peer_view(sink, conns["A"], timeout=20)
    assert nbytes == size, f"peer received {nbytes} of {size} bytes, then {end}"
    assert end in (EOF, RST)


@pytest.mark.parametrize("preload", [False, True], ids=["unpreloaded", "rst"])
def test_spawned_child_keeps_its_data(ns, lib, program, preload):
    """posix_spawn() (glibc: clone(CLONE_VFORK), no fork handlers run; so do
    Python's subprocess, system() and popen()) hands a connected socket to a
    child; the parent closes its copy at once, before the child writes. The
    parent's close is not the last reference: whatever it does must not make
    the child's later close discard the child's 8 MiB."""
    size = 8 * MiB
    sink = ns.start_sink(program("sink_server"), PORT, read_delay_us=500, chunk=65536,
                         rcvbuf=65536)
    env = tcpfix_env(lib, close="rst") if preload else None
    conns, _ = exercise(ns, program, "spawn-child-writes", "127.0.0.1", PORT, "-b", size,
                        env=env, timeout=30)
    nbytes, _, end = peer_view(sink, conns["A"], timeout=20)
    assert nbytes == size, f"peer received {nbytes} of {size} bytes, then {end}"
    assert end in (EOF, RST)


# -- children that ran no fork handler ---------------------------------------------------------
#
# A child made by vfork() or clone(CLONE_VM) shares its parent's memory, and
# with it tcpfix's descriptor table and counters; one made by a clone or fork
# system call has a copy of them, and tcpfix in it was never told it is a
# child. Either way the hooks there must leave the table and the socket alone:
# whatever the child does with A, the parent's own write and close of A must
# come out as if the child had never touched it. Each creator is a different
# way such a child comes to be, and each relies on one way tcpfix tells it
# (runtime::in_unannounced_child): vfork, __vfork and clone-vm on tcpfix's
# vfork()/clone() hooks; syscall-clone, syscall-fork and inline-clone (which
# calls no libc function at all) on the MADV_WIPEONFORK page the kernel zeroed
# in the child. test_old_kernel.py repeats some without MADV_WIPEONFORK, where
# getpid() tells.

SHARING = ["vfork", "__vfork", "clone-vm"]
COPYING = ["syscall-clone", "syscall-fork", "inline-clone"]
CHILDREN = ([(c, m) for c in SHARING for m in ("close", "dup2", "dup-close")] +
            [(c, m) for c in COPYING for m in ("close", "dup2", "exit")])


def child_id(case):
    return f"{case[0]}:{case[1]}"


@pytest.mark.parametrize("case", CHILDREN, ids=child_id)
def test_unannounced_child_leaves_the_parents_table(ns, lib, program, stats_dir, case):
    """The parent's close of A still gets the policy: RST after its bytes, no
    TIME_WAIT, counted once, in the parent. (A vfork child that dup()s and
    closes A would otherwise take A out of the parent's table: the parent's
    close would then be an untracked FIN; one that closes or dup2s over it
    would count the parent's close as its own.)"""
    creator, action = case
    sink = ns.start_sink(program("sink_server"), PORT)
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "stats-%p.json"))
    conns, pid = exercise(ns, program, "unannounced-child", "127.0.0.1", PORT, "-c", creator, "-m", action,
                          env=env)
    assert peer_view(sink, conns["A"]) == (6, "PARENT", RST)
    assert settled_time_wait(ns) == []
    st = stats_of(stats_dir, pid)
    assert (st["closes"], st["closes_rst"], st["closes_rst_dup2"]) == (1, 1, 0), st


@pytest.mark.parametrize("case", CHILDREN, ids=child_id)
def test_unannounced_child_costs_the_parent_no_byte(ns, lib, program, case):
    """Then the parent writes 8 MiB into a slow reader and closes at once:
    every byte arrives. Had the child's close, dup2 or exit applied the
    policy to A, it would have left SO_LINGER {1,0} on the socket (nothing
    was in flight then), and the parent's close would cut its data short."""
    creator, action = case
    size = 8 * MiB
    sink = ns.start_sink(program("sink_server"), PORT, read_delay_us=500, chunk=65536, rcvbuf=65536)
    conns, _ = exercise(ns, program, "unannounced-child", "127.0.0.1", PORT, "-c", creator, "-m", action,
                        "-b", size, env=tcpfix_env(lib, close="rst"), timeout=30)
    nbytes, _, end = peer_view(sink, conns["A"], timeout=20)
    assert nbytes == size, f"peer received {nbytes} of {size} bytes, then {end}"
    assert end in (EOF, RST)


@pytest.mark.parametrize("case", CHILDREN, ids=child_id)
def test_unannounced_child_unpreloaded_baseline(ns, program, case):
    """The same children without the library: the exerciser's checks pass and
    the parent's bytes arrive, then FIN."""
    creator, action = case
    sink = ns.start_sink(program("sink_server"), PORT)
    conns, _ = exercise(ns, program, "unannounced-child", "127.0.0.1", PORT, "-c", creator, "-m", action)
    assert peer_view(sink, conns["A"]) == (6, "PARENT", EOF)


RAW_CHILD_EXITS = r"""
import ctypes, json, os, platform, socket, subprocess, sys
port, cli, share, stats = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = socket.create_connection(("127.0.0.1", port))
libc = ctypes.CDLL(None, use_errno=True)
SYS_clone = {"x86_64": 56, "aarch64": 220}[platform.machine()]
pid = libc.syscall(SYS_clone, 17, 0, 0, 0, 0)  # SIGCHLD: a copy of this memory, no fork handler
if pid == 0:
    sys.exit(0)  # exit(): tcpfix's destructor runs in the child
os.waitpid(pid, 0)
env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("TCPFIX_")}
top = subprocess.run([cli, "top", share, "--once", "--json"], capture_output=True, text=True, env=env,
                     check=True)
print(json.dumps({"pid": os.getpid(), "child": pid, "attached": json.loads(top.stdout)["pids"],
                  "stats_written": os.path.exists(stats.replace("%p", str(os.getpid())))}))
s.close()
"""


def test_unannounced_child_exit_leaves_the_parents_share_and_stats(ns, lib, cli, program, share_name,
                                                                   stats_dir):
    """A child of a clone system call that exit()s runs tcpfix's destructor
    in a copy of its parent's memory: the parent's counters, its PID as
    runtime::pid(), its process slot in the share. It must write and release
    none of them: while the parent still runs, the share counts it attached
    and no stats file bears its PID yet."""
    sink = ns.start_sink(program("sink_server"), PORT)
    stats = str(stats_dir / "stats-%p.json")
    env = tcpfix_env(lib, share=share_name, connect_rate="1000/s", stats=stats)
    r = ns.run([PYTHON, "-c", RAW_CHILD_EXITS, str(PORT), str(cli), share_name, stats], env=env, timeout=30)
    assert r.returncode == 0, show(r)
    (seen,) = json_lines(r.stdout)
    assert seen["child"] > 0 and seen["attached"] == [seen["pid"]], seen
    assert not seen["stats_written"], seen
    assert sink.wait_ends(1)


def test_fork_exec_child_has_its_own_table(ns, lib, program, stats_dir):
    """fork + exec of another preloaded client: the child's own connections
    get RST; the parent's inherited one is closed gracefully; the parent's
    later connection gets RST again."""
    probes = 5
    sink = ns.start_sink(program("sink_server"), PORT)
    env = tcpfix_env(lib, close="rst", stats=str(stats_dir / "stats-%p.json"))
    conns, pid = exercise(ns, program, "fork-exec", "127.0.0.1", PORT, "--",
                          program("port_probe"), "127.0.0.1", PORT, probes, env=env)
    assert peer_view(sink, conns["A"]) == (6, "PARENT", EOF)
    assert peer_view(sink, conns["B"]) == (0, "", RST)
    ends = sink.wait_ends(2 + probes)
    ours = {f":{conns['A']}", f":{conns['B']}"}
    child = [e for e in ends if not any(e["peer"].endswith(p) for p in ours)]
    assert [e["end"] for e in child] == [RST] * probes, child
    assert len(settled_time_wait(ns)) == 1  # A's

    parent = stats_of(stats_dir, pid)
    assert parent["closes_graceful_shared"] == 1 and parent["closes_rst"] == 1, parent
    others = [p for p in stats_dir.glob("stats-*.json") if p.name != f"stats-{pid}.json"]
    child_stats = [stats_of(stats_dir, int(p.stem.split("-")[1])) for p in others]
    assert [s["closes_rst"] for s in child_stats] == [probes], child_stats


ACCEPT_CLIENT = r"""
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
data, end = b"", "EOF"
try:
    while True:
        b = s.recv(4096)
        if not b:
            break
        data += b
except ConnectionResetError:
    end = "ECONNRESET"
print(json.dumps({"data": data.decode(), "end": end}))
"""


@pytest.mark.parametrize("mode", ["rst", "rst-always"])
def test_accepted_connections_untouched(ns, lib, program, mode):
    """A server under the preload: its accepted socket closes with FIN
    whatever the policy (only connections the process initiates are
    touched)."""
    port = 6000
    server = ns.popen([program("fd_exerciser"), "accept-side", "127.0.0.1", port],
                      env=tcpfix_env(lib, close=mode))
    first = server.stdout.readline()
    assert '"pid"' in first, first
    ready = server.stdout.readline()
    assert '"ready"' in ready, ready + server.stderr.read()
    r = ns.run([PYTHON, "-c", ACCEPT_CLIENT, str(port)], timeout=10)
    assert r.returncode == 0, show(r)
    assert json_lines(r.stdout) == [{"data": "HELLO", "end": "EOF"}]
    out, err = server.communicate(timeout=10)
    assert server.returncode == 0, out + err
    # The server closed first, gracefully: its side holds the TIME_WAIT.
    assert all(l.split()[-2] == f"127.0.0.1:{port}" for l in settled_time_wait(ns))


@pytest.mark.parametrize("scenario", ["file", "pipe", "udp", "unix", "tcp-unconnected"])
@pytest.mark.parametrize("mode", ["rst", "rst-always"])
def test_non_tcp_descriptors_untouched(ns, lib, program, stats_dir, scenario, mode):
    """Files, pipes, UDP (connected or not), AF_UNIX (pair and listener), and
    TCP sockets that never connected: data, EOF, return values and errno
    exactly as without the library, even under rst-always; nothing counted
    as a reset."""
    env = tcpfix_env(lib, close=mode, log="debug", stats=str(stats_dir / "stats-%p.json"))
    _, pid = exercise(ns, program, scenario, env=env)
    st = stats_of(stats_dir, pid)
    assert st["closes_rst"] == 0 and st["connects"] == 0, st
    assert st["sockets"] == (2 if scenario == "tcp-unconnected" else 0), st
