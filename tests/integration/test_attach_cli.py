"""`tcpfix attach`'s command line: the same options and value checks as
`tcpfix run` (and the TCPFIX_* environment), a one-line refusal for every
policy the kernel cannot carry, and the targets: --cgroup, --unit, -- CMD.
Nothing is attached when the start is refused.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from attach_env import Attach, bpf_attached, cgroup2_mount, run_in, tcpfix_programs
from helpers import show

UNCARRIED = [
    (["--connect-retries", "3"], "--connect-retries (TCPFIX_CONNECT_RETRIES=3)",
     "the kernel cannot retry a connect on a fresh socket"),
    (["--reconnect-backoff", "10ms:1s"], "--reconnect-backoff (TCPFIX_RECONNECT_BACKOFF=10ms:1s)",
     "a BPF program cannot delay a connect"),
    (["--connect-rate", "10/s"], "--connect-rate (TCPFIX_CONNECT_RATE=10/s)",
     "a BPF program cannot delay a connect"),
    (["--close", "rst-always"], "--close (TCPFIX_CLOSE=rst-always)",
     "the kernel cannot make a close abortive"),
    (["--bind-no-port"], "--bind-no-port (TCPFIX_BIND_NO_PORT=1)",
     "BPF cannot set IP_BIND_ADDRESS_NO_PORT"),
    (["--port-range", "40000-40010"], "--port-range (TCPFIX_PORT_RANGE=40000-40010)",
     "BPF cannot set IP_LOCAL_PORT_RANGE"),
    (["--share", "pool"], "--share (TCPFIX_SHARE=pool)",
     "a share holds the pacing of preloaded processes"),
]


def attach(netns, cli, *args, env=None):
    return run_in(netns, [str(cli), "attach", *args], env=env, timeout=30)


def refused(r, status: int = 2) -> str:
    assert r.returncode == status, show(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, show(r)
    return lines[0]


@pytest.mark.parametrize("args,named,why", UNCARRIED)
def test_what_the_kernel_cannot_carry_is_refused_at_start(netns, make_cgroup, attach_cli, args,
                                                          named, why):
    cg = make_cgroup()
    line = refused(attach(netns, attach_cli, "--cgroup", str(cg.path), "--close", "rst", *args)
                   if args[0] != "--close" else
                   attach(netns, attach_cli, "--cgroup", str(cg.path), *args))
    assert line.startswith(f"tcpfix: attach: {named}: {why}"), line
    assert bpf_attached(cg.path) == []


def test_environment_variables_count_and_options_win(netns, make_cgroup, attach_cli):
    cg = make_cgroup()
    line = refused(attach(netns, attach_cli, "--cgroup", str(cg.path), "--close", "rst",
                          env={"TCPFIX_CONNECT_RATE": "5/s"}))
    assert line.startswith("tcpfix: attach: --connect-rate (TCPFIX_CONNECT_RATE=5/s): "), line
    # The variable alone is a policy: this attaches.
    d = Attach(netns, attach_cli, ["--cgroup", str(cg.path)], env={"TCPFIX_CLOSE": "rst"})
    assert len(bpf_attached(cg.path)) == 1
    assert d.stop() == 0
    # The option over the variable: rst-always from the environment is not used.
    d = Attach(netns, attach_cli, ["--cgroup", str(cg.path), "--close", "rst"],
               env={"TCPFIX_CLOSE": "rst-always"})
    assert d.stop() == 0
    assert bpf_attached(cg.path) == []


def test_values_are_checked_as_the_library_checks_them(netns, make_cgroup, attach_cli):
    cg = make_cgroup()
    where = ["--cgroup", str(cg.path)]
    assert refused(attach(netns, attach_cli, *where, "--connect-timeout", "fast")) == (
        'tcpfix: TCPFIX_CONNECT_TIMEOUT="fast": expected a duration such as 250ms or 2s')
    assert refused(attach(netns, attach_cli, *where, env={"TCPFIX_CLOSE": "bogus"})) == (
        'tcpfix: TCPFIX_CLOSE="bogus": expected keep, rst or rst-always')
    assert refused(attach(netns, attach_cli, *where, "--close", "rst",
                          env={"TCPFIX_CLOSED": "rst"})) == (
        'tcpfix: TCPFIX_CLOSED="rst": no such variable; did you mean TCPFIX_CLOSE?')
    assert refused(attach(netns, attach_cli, *where, "--match", "10.0.0.1/8")).startswith(
        'tcpfix: TCPFIX_MATCH="10.0.0.1/8": expected ')
    assert bpf_attached(cg.path) == []


def test_targets(netns, make_cgroup, attach_cli, tmp_path):
    cg = make_cgroup()
    mount = cgroup2_mount()
    assert "say where" in refused(attach(netns, attach_cli, "--close", "rst"))
    assert "not several" in refused(attach(netns, attach_cli, "--cgroup", str(cg.path), "--close",
                                           "rst", "--", "true"))
    r = attach(netns, attach_cli, "--cgroup", str(cg.path), "--unit", "x.service", "--close", "rst")
    assert r.returncode == 2 and "excludes" in r.stderr, show(r)
    assert "nothing to apply" in refused(attach(netns, attach_cli, "--cgroup", str(cg.path),
                                                "--log", "info", "--tag", "t"))
    line = refused(attach(netns, attach_cli, "--cgroup", "/no/such/cgroup", "--close", "rst"))
    assert line == ("tcpfix: attach: --cgroup /no/such/cgroup: no such cgroup v2 directory "
                    f"(looked at /no/such/cgroup and {mount}/no/such/cgroup; cgroup2 is mounted at "
                    f"{mount})"), line
    not_cgroup = tmp_path / "dir"
    not_cgroup.mkdir()
    assert "no such cgroup v2 directory" in refused(
        attach(netns, attach_cli, "--cgroup", str(not_cgroup), "--close", "rst"))
    # Relative to the mount, as /proc/PID/cgroup writes it.
    d = Attach(netns, attach_cli, ["--cgroup", "/" + cg.path.name, "--close", "rst"])
    assert d.wait_event("attached")["cgroup"] == str(cg.path)
    assert len(bpf_attached(cg.path)) == 1
    assert d.stop() == 0 and bpf_attached(cg.path) == []


def test_unit_without_systemd(netns, make_cgroup, attach_cli):
    """Without systemd, --unit follows its convention, MOUNT/system.slice/NAME,
    and says so when that is absent (with systemd, systemctl is asked)."""
    mount = cgroup2_mount()
    name = f"tcpfix-absent-{secrets.token_hex(3)}.service"
    line = refused(attach(netns, attach_cli, "--unit", name, "--close", "rst"))
    assert "expected a unit name" in refused(attach(netns, attach_cli, "--unit", "nginx",
                                                    "--close", "rst"))
    if Path("/run/systemd/system").exists():
        assert line == (f"tcpfix: attach: --unit {name}: systemd has no cgroup for it (is it "
                        "running?)"), line
        return
    assert line == (f"tcpfix: attach: --unit {name}: no cgroup at {mount}/system.slice/{name} "
                    "(systemd is not running here, so its convention system.slice/NAME was used); "
                    "start the unit first, or name its cgroup with --cgroup"), line

    slice_dir = mount / "system.slice"
    made_slice = not slice_dir.exists()
    if made_slice:
        slice_dir.mkdir()
    try:
        unit = make_cgroup(f"tcpfix-test-{secrets.token_hex(3)}.service", parent=slice_dir)
        d = Attach(netns, attach_cli, ["--unit", unit.path.name, "--close", "rst"])
        assert d.wait_event("attached")["cgroup"] == str(unit.path)
        assert len(bpf_attached(unit.path)) == 1
        assert d.stop() == 0 and bpf_attached(unit.path) == []
        unit.remove()
    finally:
        if made_slice:
            slice_dir.rmdir()


def test_needs_root(netns, make_cgroup, attach_cli):
    cg = make_cgroup()
    r = run_in(netns, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                       str(attach_cli), "attach", "--cgroup", str(cg.path), "--close", "rst"])
    assert refused(r, 3) == ("tcpfix: attach: needs root: CAP_BPF (or CAP_SYS_ADMIN before "
                             "Linux 5.8) and CAP_NET_ADMIN"), show(r)
    assert bpf_attached(cg.path) == []


def test_disable_runs_the_command_with_nothing_attached(netns, attach_cli):
    r = attach(netns, attach_cli, "--disable", "--close", "rst", "--log", "info", "--",
               "sh", "-c", "exit 5")
    assert r.returncode == 5, show(r)
    assert "nothing attached" in r.stderr
    assert tcpfix_programs() == []


def test_a_cgroup_held_exclusively_is_refused(netns, make_cgroup, attach_cli):
    """A program attached the old way, without BPF_F_ALLOW_MULTI, excludes
    every other: attach says so and leaves the cgroup as it was."""
    donor, held = make_cgroup(), make_cgroup()
    d = Attach(netns, attach_cli, ["--cgroup", str(donor.path), "--close", "rst"])
    prog = str(d.wait_event("attached")["programs"][0])
    r = subprocess.run(["bpftool", "cgroup", "attach", str(held.path), "sock_ops", "id", prog],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        assert d.stop() == 0
        line = refused(attach(netns, attach_cli, "--cgroup", str(held.path), "--close", "rst"), 3)
        assert line.startswith("tcpfix: cannot attach the sock_ops program to the cgroup: "
                               "Operation not permitted"), line
        assert "without BPF_F_ALLOW_MULTI" in line
        assert [l.split()[0] for l in bpf_attached(held.path)] == [prog]
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", str(held.path), "sock_ops", "id", prog])
    assert bpf_attached(held.path) == []


def test_ip_netns_exec_hides_the_cgroup_mount_and_attach_says_what_to_do(netns, attach_cli):
    r = netns.run([str(attach_cli), "attach", "--cgroup", "/x", "--close", "rst"])
    line = refused(r)
    assert "cgroup v2 is not mounted here" in line and "nsenter --net=" in line, line
