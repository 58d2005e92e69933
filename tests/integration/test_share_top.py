"""`tcpfix top`: live in a terminal (tmux), its JSON, and the Prometheus
textfile it writes, checked by promtool."""

from __future__ import annotations

import json
import secrets
import shutil
import stat
import subprocess
import time

from conftest import CLI, tcpfix_env
from helpers import show
from share_env import destination, finish, share_name, start_acceptor, start_clients  # noqa: F401

# -- tcpfix top ----------------------------------------------------------------------------------------

class Tmux:
    """A tmux server of our own (-L), so nothing of the user's is touched."""

    def __init__(self):
        if shutil.which("tmux") is None:
            raise AssertionError("tmux is not installed (apt-get install -y tmux)")
        self.socket = f"tcpfix-{secrets.token_hex(4)}"

    def __call__(self, *args, check=True):
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10,
                              check=check)

    def screen(self, target: str) -> str:
        return self("capture-pane", "-p", "-t", target).stdout

    def kill(self):
        self("kill-server", check=False)


def test_top_live_in_a_terminal(make_netns, lib, program, share_name, tmp_path):
    ns = make_netns((20000, 60000))
    port = 7440
    acceptor = start_acceptor(ns, port, lifetime_s=60)
    env = tcpfix_env(lib, share=share_name, connect_rate="20/s")
    tmux = Tmux()
    try:
        clients = start_clients(ns, program, env, port, 2, 9000)
        time.sleep(0.5)
        cmd = f"ip netns exec {ns.name} {CLI} top {share_name}"
        tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "30", cmd)
        screen = ""
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            time.sleep(0.5)
            screen = tmux.screen("top")
            if f"127.0.0.1:{port}" in screen and "processes attached: 2" in screen:
                time.sleep(1.2)  # one more refresh, the rates over a full interval
                screen = tmux.screen("top")
                break
        print(screen)
        assert f"tcpfix top - share {share_name} (uid 0)" in screen, screen
        assert "processes attached: 2" in screen, screen
        row = [l for l in screen.splitlines() if l.startswith(f"127.0.0.1:{port}")]
        assert row, screen
        cols = row[0].split()
        conn_per_s = float(cols[1])
        assert 14 <= conn_per_s <= 26, row
        assert cols[3] == "-", row  # healthy: no backoff
        tmux("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 3
        while tmux("has-session", "-t", "top", check=False).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tmux("has-session", "-t", "top", check=False).returncode != 0, "q did not end tcpfix top"
        finish(clients)
    finally:
        tmux.kill()
        acceptor.kill()


def test_top_json_and_prometheus_textfile(make_netns, lib, program, share_name, tmp_path):
    ns = make_netns((20000, 60000))
    port = 7450
    acceptor = start_acceptor(ns, port, lifetime_s=60)
    env = tcpfix_env(lib, share=share_name, reconnect_backoff="10ms:100ms")
    try:
        finish(start_clients(ns, program, env, port, 2, 1000, extra=("-n", "50")))
        finish(start_clients(ns, program, env, 7451, 1, 1000, extra=("-n", "3")))
    finally:
        acceptor.kill()
    prom = tmp_path / "textfile" / "tcpfix.prom"
    prom.parent.mkdir()
    r = ns.run([str(CLI), "top", share_name, "--once", "--json", "--interval", "100ms", "--prom", str(prom)])
    assert r.returncode == 0, show(r)
    top = json.loads(r.stdout)
    d = destination(top, f"127.0.0.1:{port}")
    assert d["connects"] == 100 and d["failures"] == 0, d
    refused = destination(top, "127.0.0.1:7451")
    assert refused["connects"] == 3 and refused["failures"] == 3 and refused["consecutive_failures"] == 3, refused
    assert refused["backoff_delay_ms"] == 40, refused
    # The TIME_WAIT entries toward it in the namespace, as ss counts them
    # (most of the 100: client and server close at about the same moment).
    tw = ns.time_wait_count(port)
    assert d["time_wait"] == tw and tw >= 50, (d, tw)
    text = prom.read_text()
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert (f'tcpfix_share_connects_total{{share="{share_name}",destination="127.0.0.1:{port}"}} 100\n') in text, text
    assert (f'tcpfix_share_backoff_delay_seconds{{share="{share_name}",destination="127.0.0.1:7451"}} 0.04\n') in text
    assert (f'tcpfix_share_time_wait_sockets{{share="{share_name}",destination="127.0.0.1:{port}"}} {tw}\n') in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install -y prometheus)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    # Without a name: every share of the host in one file.
    allprom = tmp_path / "textfile" / "all.prom"
    r = subprocess.run([str(CLI), "top", "--prom", str(allprom)], capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, r.stderr
    assert f'tcpfix_share_info{{share="{share_name}",uid="0"}} 1' in allprom.read_text()
    # Usage errors: one line, status 2.
    for argv, needle in ((["top", "no/such"], "a share name is"),
                         (["top", f"absent-{secrets.token_hex(3)}"], "no such share")):
        r = subprocess.run([str(CLI), *argv], capture_output=True, text=True, timeout=15)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, (argv, r.stderr)


def test_completion_offers_the_shares_and_tops_options(netns, lib, share_name):
    from test_package import complete
    r = netns.run(["/usr/bin/python3", "-c", "import socket; s=socket.socket(); s.connect_ex(('127.0.0.1', 7460))"],
                  env=tcpfix_env(lib, share=share_name))
    assert r.returncode == 0, show(r)
    assert share_name in complete(["tcpfix", "top", share_name[:7]])
    assert {"--once", "--json", "--interval", "--prom", "--uid"} <= set(complete(["tcpfix", "top", "--"]))
    assert "/tmp" in complete(["tcpfix", "top", share_name, "--prom", "/tm"])
