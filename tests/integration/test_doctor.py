"""`tcpfix doctor`: on a namespace the test filled with a known set of sockets
it reports the kernel's exact counts and the right diagnosis; on programs
LD_PRELOAD cannot reach (static, set-user-ID, RTLD_DEEPBIND) it warns.

Every count doctor reports is checked against `ss` (iproute2's own
sock_diag reader), read just before and just after doctor ran, and against
what the test did: 20 probes -> 20 TIME_WAIT entries (see README.md here for
the rare client TIME_WAIT entry the kernel kills early: the ss reads are
then what doctor must match), 6 leaked connections -> 6 CLOSE_WAIT sockets
with 6 x 132 unread bytes, owned by the process that leaked them.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

from conftest import PYTHON
from helpers import run_prober, settled_time_wait, show

TW_PORT = 5432
CW_PORT = 3306
SYN_PORT = 6379
GREETING = 132  # greeting_server's default greeting, unread in every leaked socket

# Connects N times to 127.0.0.1:PORT, never reads, never closes: incident
# 001's leak. Prints its pid once every connection is up, then waits.
HOLDER = r"""
import os, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
print(os.getpid(), flush=True)
time.sleep(120)
"""

# A listener with backlog 0 that never accepts, and N non-blocking connects
# to it: after the first, the kernel drops every SYN (accept queue full), so
# the rest sit in SYN_SENT. Prints its pid once all are started.
SYN_PILE = r"""
import os, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
listener = socket.socket()
listener.bind(("127.0.0.1", port))
listener.listen(0)
clients = []
for _ in range(n):
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", port))
    clients.append(c)
    time.sleep(0.02)
print(os.getpid(), flush=True)
time.sleep(120)
"""


def doctor_json(ns, cli, *args) -> tuple[dict, subprocess.CompletedProcess]:
    r = ns.run([str(cli), "doctor", "--json", *args])
    assert r.returncode in (0, 1), show(r)
    return json.loads(r.stdout), r


def destination(report: dict, text: str) -> dict:
    found = [d for d in report["destinations"] if d["destination"] == text]
    assert len(found) == 1, f"{text} not among {[d['destination'] for d in report['destinations']]}"
    return found[0]


def start_greeting_server(ns, program, port: int):
    p = ns.popen([program("greeting_server"), "-p", str(port), "-d", "50", "-t", "120000"])
    line = p.stdout.readline()
    assert line.startswith("ready"), f"greeting_server did not start: {line!r} {p.stderr.read()}"
    return p


def start_python(ns, script: str, *args) -> tuple[subprocess.Popen, int]:
    p = ns.popen([PYTHON, "-c", script, *map(str, args)])
    line = p.stdout.readline()
    assert line.strip().isdigit(), f"helper did not start: {line!r} {p.stderr.read()}"
    return p, int(line)


def wait_for_state(ns, state: str, port: int, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(ns.sockets(state, port)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ns.sockets(state, port)) == n, ns.sockets(state, port)


def fill_time_wait_and_close_wait(ns, program):
    """20 probes (incident 000's loop) leave TIME_WAIT toward :5432; a
    python3 process leaks 6 connections to :3306 in CLOSE_WAIT."""
    ns.start_sink(program("sink_server"), TW_PORT, timeout_ms=120000)
    summary, r = run_prober(ns, program, "c", "127.0.0.1", TW_PORT, 20)
    assert summary == {"ok": 20, "eaddrnotavail": 0, "other": 0}, show(r)
    start_greeting_server(ns, program, CW_PORT)
    _, holder_pid = start_python(ns, HOLDER, CW_PORT, 6)
    wait_for_state(ns, "close-wait", CW_PORT, 6)
    settled_time_wait(ns, TW_PORT)
    return holder_pid


def test_doctor_reports_exact_counts_and_names_incidents_000_and_001(make_netns, cli, program):
    ns = make_netns((40000, 40039))
    holder_pid = fill_time_wait_and_close_wait(ns, program)

    tw_before = ns.time_wait_count(TW_PORT)
    cw_before = len(ns.sockets("close-wait", CW_PORT))
    report, r = doctor_json(ns, cli)
    assert ns.time_wait_count(TW_PORT) == tw_before and len(ns.sockets("close-wait", CW_PORT)) == cw_before
    assert r.returncode == 1, "findings must give exit status 1\n" + show(r)
    # 20 probes: 20 entries, unless the kernel killed one early (README.md).
    assert 18 <= tw_before <= 20 and cw_before == 6, (tw_before, cw_before)

    st = report["settings"]
    assert st["ip_local_port_range"] == [40000, 40039] and st["usable_ports"] == 40
    assert st["port_range_parity_ok"] is True
    assert st["tcp_tw_reuse"] == 0 and st["time_wait_s"] == 60

    assert report["sockets"]["states"]["TIME_WAIT"] == tw_before
    assert report["sockets"]["states"]["CLOSE_WAIT"] == 6
    tw = destination(report, f"127.0.0.1:{TW_PORT}")
    assert tw["time_wait"] == tw_before and tw["total"] == tw_before
    assert tw["source_addresses"] == 1 and tw["capacity"] == 40
    assert abs(tw["sustainable_per_s"] - 40 / 60) < 0.001
    cw = destination(report, f"127.0.0.1:{CW_PORT}")
    assert cw["close_wait"] == 6 and cw["close_wait_unread"] == 6 * GREETING
    assert cw["processes"] == [{"pid": holder_pid, "command": "python3", "sockets": 6}]

    holders = [h for h in report["close_wait"] if h["pid"] == holder_pid]
    assert holders == [{"pid": holder_pid, "command": "python3", "outbound": True, "sockets": 6,
                        "unread": 6 * GREETING, "destinations": {f"127.0.0.1:{CW_PORT}": 6}}], \
        report["close_wait"]

    findings = {(f["incident"], f["kind"]): f for f in report["findings"]}
    assert set(findings) == {("000", "time_wait"), ("001", "close_wait")}, report["findings"]
    f000 = findings[("000", "time_wait")]
    assert f000["subject"] == f"127.0.0.1:{TW_PORT}" and f000["severity"] == "warn"
    assert f000["cures"][0] == "TCPFIX_CLOSE=rst" and "TCPFIX_SOURCE_ADDRS" in f000["cures"]
    f001 = findings[("001", "close_wait")]
    assert f001["subject"] == f"python3 (pid {holder_pid})"
    assert f001["cures"] == ["TCPFIX_REAP_CLOSE_WAIT=5s", "TCPFIX_RECONNECT_BACKOFF=10ms:2s"]

    # The same, in sentences.
    text = ns.run([str(cli), "doctor"])
    assert text.returncode == 1, show(text)
    out = " ".join(text.stdout.split())
    assert f"[warn] incident 000: 127.0.0.1:{TW_PORT}" in out, out
    assert f"{tw_before} TIME_WAIT entries toward 127.0.0.1:{TW_PORT}" in out
    assert "Linux keeps each TIME_WAIT entry a fixed 60 s" in out
    assert "cure: TCPFIX_CLOSE=rst, TCPFIX_SOURCE_ADDRS" in out
    assert (f"python3 (pid {holder_pid}) holds 6 connections it opened in CLOSE_WAIT "
            f"(6 to 127.0.0.1:{CW_PORT}), with {6 * GREETING} bytes never read") in out
    assert "cure: TCPFIX_REAP_CLOSE_WAIT=5s, TCPFIX_RECONNECT_BACKOFF=10ms:2s" in out
    assert "tcp_fin_timeout" in out and "TCP_TIMEWAIT_LEN" in out

    # HOST:PORT: that destination's counts and its sustainable rate.
    report, r = doctor_json(ns, cli, f"127.0.0.1:{TW_PORT}")
    assert len(report["targets"]) == 1, report["targets"]
    t = report["targets"][0]
    assert t["destination"] == f"127.0.0.1:{TW_PORT}" and t["time_wait"] == tw_before
    assert t["ports_in_use"] == tw_before and t["capacity"] == 40
    text = ns.run([str(cli), "doctor", f"127.0.0.1:{TW_PORT}"])
    out = " ".join(text.stdout.split())
    assert ("Sustainable short-connection rate: 1 source address x 40 ports / 60 s of TIME_WAIT "
            "= 0.67 new connections a second.") in out, out


def test_doctor_counts_source_addresses_toward_a_destination(make_netns, cli, lib, program):
    """Connections spread over two source addresses (TCPFIX_SOURCE_ADDRS, the
    incident-002 cure): doctor counts both, and the capacity and sustainable
    rate double."""
    ns = make_netns((40000, 40039))
    ns.start_sink(program("sink_server"), TW_PORT, timeout_ms=120000)
    env = {"LD_PRELOAD": str(lib), "TCPFIX_SOURCE_ADDRS": "127.0.0.2,127.0.0.3"}
    summary, r = run_prober(ns, program, "c", "127.0.0.1", TW_PORT, 30, env=env)
    assert summary == {"ok": 30, "eaddrnotavail": 0, "other": 0}, show(r)
    tw = len(settled_time_wait(ns, TW_PORT))
    sources = {line.split()[-2].rsplit(":", 1)[0] for line in ns.time_wait(TW_PORT)}
    assert sources == {"127.0.0.2", "127.0.0.3"}, sources

    report, _ = doctor_json(ns, cli, f"127.0.0.1:{TW_PORT}")
    d = destination(report, f"127.0.0.1:{TW_PORT}")
    assert d["time_wait"] == tw and d["source_addresses"] == 2
    assert d["capacity"] == 80 and abs(d["sustainable_per_s"] - 80 / 60) < 0.001
    assert report["targets"][0]["source_addresses"] == 2


def test_doctor_on_an_exhausted_range_is_critical(make_netns, cli, program):
    """Incident 000 to the end: 3 x range probes, the range full of TIME_WAIT,
    EADDRNOTAVAIL. doctor says critical, names EADDRNOTAVAIL, and flags the
    range itself."""
    ns = make_netns((40000, 40019))
    ns.start_sink(program("sink_server"), TW_PORT, timeout_ms=120000)
    summary, r = run_prober(ns, program, "c", "127.0.0.1", TW_PORT, 60)
    assert summary["eaddrnotavail"] > 0, show(r)
    tw = len(settled_time_wait(ns, TW_PORT))

    report, r = doctor_json(ns, cli)
    assert r.returncode == 1
    d = destination(report, f"127.0.0.1:{TW_PORT}")
    assert d["time_wait"] == tw == ns.time_wait_count(TW_PORT)
    assert report["sockets"]["ports_in_use"] == tw
    kinds = {f["kind"]: f for f in report["findings"]}
    assert set(kinds) == {"time_wait", "port_range"}, report["findings"]
    assert kinds["time_wait"]["severity"] == "critical" and kinds["time_wait"]["incident"] == "000"
    assert "EADDRNOTAVAIL" in kinds["time_wait"]["text"]
    assert kinds["port_range"]["incident"] == "000"
    assert "TCPFIX_CLOSE=rst" in kinds["port_range"]["cures"]


def test_doctor_sees_handshakes_piling_up(make_netns, cli):
    """Incident 003's condition: SYNs dropped by a listener whose accept
    queue is full; the connects wait in SYN_SENT."""
    ns = make_netns((40000, 40039))
    _, pid = start_python(ns, SYN_PILE, SYN_PORT, 8)
    syn_sent = len(ns.sockets("syn-sent", SYN_PORT))
    assert syn_sent >= 6, ns.sockets("all")

    report, r = doctor_json(ns, cli)
    assert r.returncode == 1
    d = destination(report, f"127.0.0.1:{SYN_PORT}")
    assert d["syn_sent"] == syn_sent == len(ns.sockets("syn-sent", SYN_PORT))
    assert d["processes"][0]["pid"] == pid
    assert report["full_listeners"] and report["full_listeners"][0]["local"] == f"127.0.0.1:{SYN_PORT}"
    kinds = {f["kind"]: f for f in report["findings"]}
    assert set(kinds) == {"syn_sent", "accept_queue"}, report["findings"]
    assert kinds["syn_sent"]["incident"] == "003"
    assert kinds["syn_sent"]["cures"] == ["TCPFIX_CONNECT_TIMEOUT=100ms", "TCPFIX_CONNECT_RETRIES=3"]
    assert "tcp_syn_retries=6" in kinds["syn_sent"]["text"]


def test_doctor_on_a_quiet_namespace_finds_nothing(make_netns, cli):
    ns = make_netns((40000, 40039))
    report, r = doctor_json(ns, cli)
    assert r.returncode == 0, show(r)
    assert report["findings"] == [] and report["sockets"]["total"] == 0
    text = ns.run([str(cli), "doctor"])
    assert text.returncode == 0 and "Nothing here matches the four incidents" in text.stdout


def test_doctor_rejects_a_bad_target(make_netns, cli):
    ns = make_netns()
    for bad in ["127.0.0.1", "127.0.0.1:0", "::1:6379", "[::1]6379"]:
        r = ns.run([str(cli), "doctor", bad])
        assert r.returncode == 2 and r.stderr.startswith("tcpfix: doctor:"), (bad, show(r))


# -- --binary ----------------------------------------------------------------------------------

PROGRAM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argc > 1 ? argv[1] : "libm.so.6", FLAGS);
    printf("%p\n", h);
    return 0;
}
"""


def compile_c(tmp_path: Path, name: str, flags: str, *cc_args: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to build the test programs"
    src = tmp_path / f"{name}.c"
    src.write_text(PROGRAM_C.replace("FLAGS", flags))
    out = tmp_path / name
    r = subprocess.run([cc, "-O2", *cc_args, "-o", str(out), str(src)], capture_output=True,
                       text=True)
    assert r.returncode == 0, f"cannot build {name}: {r.stderr}"
    return str(out)


def binary_json(cli, path: str) -> tuple[dict, subprocess.CompletedProcess]:
    r = subprocess.run([str(cli), "doctor", "--binary", path, "--json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode in (0, 1), show(r)
    return json.loads(r.stdout), r


def test_doctor_binary_warns_for_a_static_binary(cli, tmp_path):
    static = compile_c(tmp_path, "static_prog", "RTLD_NOW", "-static")
    report, r = binary_json(cli, static)
    assert r.returncode == 1
    kinds = [f["kind"] for f in report["findings"]]
    assert kinds == ["static"], report
    assert report["preload_reaches"] is False
    assert report["instead"] == "tcpfix attach"  # not a dead end: the kernel's policies reach it
    text = subprocess.run([str(cli), "doctor", "--binary", static], capture_output=True, text=True)
    assert text.returncode == 1
    assert "statically linked" in text.stdout and "LD_PRELOAD cannot reach it" in text.stdout
    assert "LD_PRELOAD does not reach it" in text.stdout
    assert "cannot help" not in text.stdout
    flat = " ".join(text.stdout.split())
    assert f"`tcpfix attach --close rst -- {static}`" in flat, text.stdout
    assert "--unit NAME.service" in flat


def test_doctor_binary_passes_a_plain_dynamic_program(cli, tmp_path):
    plain = compile_c(tmp_path, "plain_prog", "RTLD_NOW")
    report, r = binary_json(cli, plain)
    assert r.returncode == 0 and report["findings"] == [] and report["preload_reaches"] is True
    assert "instead" not in report
    assert report["checked"][0] == plain
    assert any(p.endswith("/libc.so.6") for p in report["checked"]), report["checked"]


def test_doctor_binary_warns_for_rtld_deepbind(cli, tmp_path):
    """A dlopen(RTLD_DEEPBIND) call site, whether through the PLT, with
    -fno-plt (a call through the GOT) or unoptimised; in the program, or in
    the interpreter of a script."""
    for variant, args in [("plt", ()), ("noplt", ("-fno-plt",)), ("O0", ("-O0",))]:
        deep = compile_c(tmp_path, f"deep_{variant}", "RTLD_NOW | RTLD_DEEPBIND", *args)
        report, r = binary_json(cli, deep)
        assert r.returncode == 1, (variant, report)
        deepbind = [f for f in report["findings"] if f["kind"] == "deepbind"]
        assert len(deepbind) == 1 and deepbind[0]["subject"] == deep, (variant, report)
        assert "flags 0xa" in deepbind[0]["text"]  # RTLD_NOW | RTLD_DEEPBIND
        assert report["preload_reaches"] is True  # the program's own calls still are

    script = tmp_path / "script.sh"
    script.write_text(f"#!{deep}\n")
    script.chmod(0o755)
    report, r = binary_json(cli, str(script))
    assert [f["kind"] for f in report["findings"]] == ["deepbind"], report


def test_doctor_binary_warns_for_set_user_id_and_file_capabilities(cli, tmp_path):
    suid = compile_c(tmp_path, "suid_prog", "RTLD_NOW")
    os.chmod(suid, 0o4755)
    report, r = binary_json(cli, suid)
    assert r.returncode == 1
    assert [f["kind"] for f in report["findings"]] == ["secure"], report
    assert "set-user-ID" in report["findings"][0]["text"]
    assert report["preload_reaches"] is False and report["instead"] == "tcpfix attach"
    text = subprocess.run([str(cli), "doctor", "--binary", suid], capture_output=True, text=True)
    assert "`tcpfix attach" in text.stdout and "cannot help" not in text.stdout

    # cap_net_raw+ep, as `setcap cap_net_raw+ep` writes it (vfs_cap_data revision 2).
    caps = compile_c(tmp_path, "caps_prog", "RTLD_NOW")
    os.setxattr(caps, "security.capability", struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0))
    report, r = binary_json(cli, caps)
    assert r.returncode == 1
    assert [f["kind"] for f in report["findings"]] == ["secure"], report
    assert "file capabilities" in report["findings"][0]["text"]


def test_doctor_binary_refuses_a_missing_program(cli, tmp_path):
    r = subprocess.run([str(cli), "doctor", "--binary", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such program" in r.stderr, show(r)
