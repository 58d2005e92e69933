"""`tcpfix attach --close rst`: incident 000 cured for probers no preload
reaches — a static Go binary and a set-user-ID copy of the C prober.

Each arm probes 3 x a 20-port range at 10 ms intervals. Without attach the
range fills with TIME_WAIT entries and the rest fail with EADDRNOTAVAIL;
attached, the daemon destroys each matched TIME_WAIT entry as soon as the
connection's state change reports it, so every probe succeeds and nothing
is left. A prober outside the cgroup and a destination outside --match keep
their TIME_WAIT entries: attach touches only what it was pointed at.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from attach_env import Attach, bpf_attached, go_run, run_in, start_server
from conftest import parse_summary
from helpers import settled_time_wait, show

PROBES = 60  # 3 x the 20-port range
INTERVAL_MS = 10


def tw_to(ns, port: int) -> int:
    return len(settled_time_wait(ns, port))


def test_go_prober_baseline_runs_out_of_ports(make_netns, program, go_client):
    ns = make_netns()
    start_server(ns, program, 5000)
    r = go_run(ns, go_client, "probe", "127.0.0.1", "5000", str(PROBES), str(INTERVAL_MS))
    assert r["ok"] <= ns.range_size + 2, r
    assert r["eaddrnotavail"] >= PROBES - ns.range_size - 2, r
    assert tw_to(ns, 5000) >= ns.range_size - 2


def test_attach_close_rst_cures_the_go_prober_and_touches_nothing_else(
        make_netns, make_cgroup, program, go_client, attach_cli, stats_dir):
    ns = make_netns()
    cg = make_cgroup()
    for port in (5000, 5001):
        start_server(ns, program, port)
    stats = stats_dir / "attach.json"
    daemon = Attach(ns, attach_cli, ["--cgroup", str(cg.path), "--close", "rst",
                                     "--match", "127.0.0.1:5000", "--stats", str(stats)])

    # Outside the cgroup, to the matched destination: untouched.
    outside = go_run(ns, go_client, "probe", "127.0.0.1", "5000", "8", str(INTERVAL_MS))
    assert outside["ok"] == 8, outside
    # In the cgroup, to a destination outside --match: untouched.
    unmatched = go_run(ns, go_client, "probe", "127.0.0.1", "5001", "6", str(INTERVAL_MS),
                       cgroup=cg)
    assert unmatched["ok"] == 6, unmatched
    assert tw_to(ns, 5000) == 8 and tw_to(ns, 5001) == 6

    # The prober itself: 3 x the range, every probe succeeds.
    r = go_run(ns, go_client, "probe", "127.0.0.1", "5000", str(PROBES), str(INTERVAL_MS),
               cgroup=cg)
    assert r["ok"] == PROBES and r["eaddrnotavail"] == 0 and r["other"] == 0, r
    # Only the outsider's entries are left; the unmatched ones still stand.
    assert tw_to(ns, 5000) == 8
    assert tw_to(ns, 5001) == 6

    assert daemon.stop() == 0, daemon.text()
    assert bpf_attached(cg.path) == []
    s = __import__("json").loads(stats.read_text())
    assert s["closes_rst"] == PROBES and s["attach"]["time_wait_destroyed"] == PROBES, s
    assert s["connects_matched"] == PROBES and s["connects"] == PROBES + 6, s
    assert s["policy"]["TCPFIX_CLOSE"] == "rst"
    assert "detached from" in daemon.text()


def test_attach_reaches_a_set_user_id_prober(make_netns, make_cgroup, program, attach_cli, cli,
                                              lib):
    """port_probe copied set-user-ID root and run by `nobody`: the loader
    runs it in secure mode and drops LD_PRELOAD, so `tcpfix run` cannot help
    (control arm); attached, its cgroup's probes all succeed."""
    d = Path(tempfile.mkdtemp(prefix="tcpfix-suid-", dir="/var/tmp"))
    try:
        d.chmod(0o755)
        suid = d / "port_probe"
        shutil.copy(program("port_probe"), suid)
        os.chown(suid, 0, 0)
        suid.chmod(0o4755)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        probe = [str(suid), "127.0.0.1", "5000", str(PROBES), str(INTERVAL_MS * 1000)]

        control = make_netns()
        start_server(control, program, 5000)
        r = run_in(control, [*as_nobody, str(cli), "run", "--close", "rst", "--library", str(lib),
                             "--", *probe])
        assert r.returncode == 0, show(r)
        assert "set-user-ID" in r.stderr  # tcpfix run says it cannot reach it
        got = parse_summary(r.stdout)
        assert got["eaddrnotavail"] >= PROBES - control.range_size - 2, show(r)

        ns = make_netns()
        cg = make_cgroup()
        start_server(ns, program, 5000)
        daemon = Attach(ns, attach_cli, ["--cgroup", str(cg.path), "--close", "rst"])
        r = run_in(ns, [*as_nobody, *probe], cgroup=cg)
        assert r.returncode == 0, show(r)
        assert parse_summary(r.stdout) == {"ok": PROBES, "eaddrnotavail": 0, "other": 0}, show(r)
        assert tw_to(ns, 5000) == 0
        assert daemon.stop(signal.SIGINT) == 0, daemon.text()
        assert bpf_attached(cg.path) == []
    finally:
        shutil.rmtree(d, ignore_errors=True)


DUAL_STACK_PROBER = """
import errno, socket, time
ok = fail = 0
for i in range(PROBES):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s.connect(("::ffff:127.0.0.1", 5000))
        ok += 1
    except OSError as e:
        fail += 1
    s.close()
    time.sleep(0.01)
print(f"ok={ok} eaddrnotavail={fail} other=0")
"""


def test_a_dual_stack_client_is_matched_by_its_ipv4_rule(make_netns, make_cgroup, program,
                                                         attach_cli):
    """An AF_INET6 socket to ::ffff:127.0.0.1 (the JVM's way): the rule
    127.0.0.1:5000 matches it in the kernel, and its TIME_WAIT entry (an
    IPv6 socket's, with mapped addresses) is found and destroyed."""
    from conftest import PYTHON
    ns = make_netns()
    cg = make_cgroup()
    start_server(ns, program, 5000)
    daemon = Attach(ns, attach_cli, ["--cgroup", str(cg.path), "--close", "rst", "--match",
                                     "127.0.0.1:5000"])
    r = run_in(ns, [PYTHON, "-c", DUAL_STACK_PROBER.replace("PROBES", str(PROBES))], cgroup=cg)
    assert parse_summary(r.stdout) == {"ok": PROBES, "eaddrnotavail": 0, "other": 0}, show(r)
    assert tw_to(ns, 5000) == 0
    assert daemon.stop() == 0
