"""`tcpfix attach -- CMD` and what is left when attach ends, however it ends.

With a command, attach makes a cgroup of its own beside its own cgroup
(tcpfix-attach.PID), attaches there, starts CMD in it, and when CMD exits
detaches, removes the cgroup and exits with CMD's status. The programs are
attached by BPF links held by the daemon alone (descriptors close-on-exec),
so a daemon killed with SIGKILL leaves nothing attached, even while its
command runs on.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from attach_env import (Attach, Cgroup, bpf_attached, cgroup2_mount, last_json, popen_in, run_in,
                        start_server, tcpfix_links, tcpfix_programs)
from helpers import settled_time_wait, show


def own_child_cgroup(pid: int) -> Path:
    """Where attach (PID) makes the command's cgroup: beside its own, which
    is this test's (nsenter and env exec; they do not move)."""
    rel = [l for l in Path("/proc/self/cgroup").read_text().splitlines() if l.startswith("0::")]
    base = cgroup2_mount() / rel[0][3:].lstrip("/")
    return base / f"tcpfix-attach.{pid}"


def wait_detached(path: Path, timeout: float = 3.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = bpf_attached(path) if path.exists() else []
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_command_mode_cures_the_prober_and_removes_its_cgroup(make_netns, program, go_client,
                                                              attach_cli, stats_dir):
    ns = make_netns()
    start_server(ns, program, 5000)
    stats = stats_dir / "cmd-%p.json"
    p = popen_in(ns, [str(attach_cli), "attach", "--close", "rst", "--log", "info", "--stats",
                      str(stats), "--", go_client, "probe", "127.0.0.1", "5000", "60", "10"])
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, f"{out}\n{err}"
    r = last_json(out)
    assert r["ok"] == 60 and r["eaddrnotavail"] == 0, r
    assert settled_time_wait(ns, 5000) == []
    cg = own_child_cgroup(p.pid)
    assert f"attached to {cg}" in err, err
    assert not cg.exists(), f"{cg} was left behind"
    assert tcpfix_programs() == [] and tcpfix_links() == []
    s = json.loads((stats_dir / f"cmd-{p.pid}.json").read_text())
    assert s["closes_rst"] == 60 and s["attach"]["cgroup"] == str(cg), s


def test_command_exit_status_and_signals(netns, attach_cli):
    def attach_cmd(*cmd):
        return run_in(netns, [str(attach_cli), "attach", "--close", "rst", "--log", "info", "--",
                              *cmd], timeout=30)

    assert attach_cmd("sh", "-c", "exit 7").returncode == 7
    assert attach_cmd("sh", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM
    r = attach_cmd("/no/such/program")
    assert r.returncode == 127 and "cannot execute /no/such/program" in r.stderr, show(r)
    # SIGTERM to attach goes on to the command; attach stays until it exits.
    p = popen_in(netns, [str(attach_cli), "attach", "--close", "rst", "--log", "info", "--json",
                         "--", "sleep", "30"])
    deadline = time.monotonic() + 10
    while not own_child_cgroup(p.pid).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 128 + signal.SIGTERM, f"{out}\n{err}"
    assert "passed on to the command" in err, err
    assert json.loads(out.splitlines()[-1])["event"] == "detached"
    assert not own_child_cgroup(p.pid).exists()
    assert tcpfix_programs() == []


def test_a_killed_daemon_leaves_nothing_attached(netns, make_cgroup, attach_cli):
    cg = make_cgroup()
    d = Attach(netns, attach_cli, ["--cgroup", str(cg.path), "--close", "rst",
                                   "--reap-close-wait", "1s", "--connect-timeout", "50ms",
                                   "--source-addrs", "127.0.0.1"])
    assert len(bpf_attached(cg.path)) == 3  # sock_ops, connect4, connect6
    assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    assert wait_detached(cg.path) == []
    assert tcpfix_programs() == [] and tcpfix_links() == []

    # Killed while its command runs: the command goes on, unmanaged; the
    # links died with the daemon (the command did not inherit them).
    p = popen_in(netns, [str(attach_cli), "attach", "--close", "rst", "--json", "--", "sleep",
                         "30"])
    child_cg = own_child_cgroup(p.pid)
    leftover = Cgroup.__new__(Cgroup)  # removed at the end, killing the sleep
    leftover.path = child_cg
    try:
        deadline = time.monotonic() + 10
        while not (child_cg.exists() and Cgroup.procs.fget(leftover)) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        sleeper = Cgroup.procs.fget(leftover)
        assert len(sleeper) == 1 and len(bpf_attached(child_cg)) == 1
        links = os.listdir(f"/proc/{sleeper[0]}/fd")
        assert not any("bpf" in os.readlink(f"/proc/{sleeper[0]}/fd/{fd}") for fd in links)
        p.kill()
        p.wait(10)
        assert wait_detached(child_cg) == []
        assert Cgroup.procs.fget(leftover) == sleeper  # still running
        assert tcpfix_programs() == []
    finally:
        leftover.remove()


def test_follows_a_cgroup_that_goes_and_comes_back(netns, make_cgroup, attach_cli):
    """systemd removes a stopped unit's cgroup and makes a new one when it
    starts again: attach drops its links with the old one and attaches to
    the new one."""
    cg = make_cgroup()
    d = Attach(netns, attach_cli, ["--cgroup", str(cg.path), "--close", "rst"])
    assert len(bpf_attached(cg.path)) == 1
    cg.path.rmdir()
    deadline = time.monotonic() + 5
    while "is gone" not in d.text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "is gone (its unit stopped?)" in d.text(), d.text()
    cg.path.mkdir()
    deadline = time.monotonic() + 5
    while not [e for e in d.events if e.get("again")] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e for e in d.events if e.get("again")], d.text()
    assert len(bpf_attached(cg.path)) == 1
    assert d.stop() == 0
    assert bpf_attached(cg.path) == [] and tcpfix_programs() == []


def test_sockets_in_another_network_namespace_are_left_alone(make_netns, make_cgroup, program,
                                                            go_client, attach_cli):
    """attach destroys and reaps only in its own network namespace; a
    socket of the cgroup elsewhere (a container's) is counted and warned
    about once, and its TIME_WAIT entries stay."""
    home, away = make_netns(), make_netns()
    cg = make_cgroup()
    start_server(away, program, 5000)
    d = Attach(home, attach_cli, ["--cgroup", str(cg.path), "--close", "rst"])
    from attach_env import go_run
    r = go_run(away, go_client, "probe", "127.0.0.1", "5000", "10", "10", cgroup=cg)
    assert r["ok"] == 10
    assert len(settled_time_wait(away, 5000)) == 10
    assert d.stop() == 0
    warnings = [l for l in d.text().splitlines() if "another network namespace" in l]
    assert len(warnings) == 1, d.text()


def test_prometheus_stats_pass_promtool(netns, attach_cli, stats_dir):
    import subprocess
    prom = stats_dir / "attach.prom"
    r = run_in(netns, [str(attach_cli), "attach", "--close", "rst", "--tag", "arm-a", "--stats",
                       str(prom), "--", "true"])
    assert r.returncode == 0, show(r)
    text = prom.read_text()
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert 'tcpfix_attach_time_wait_destroyed_total{tag="arm-a"} 0' in text
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
