"""`tcpfix ab`: a real short-connection client run alternately under two
variable sets. The TCPFIX_CLOSE=rst arm must leave fewer TIME_WAIT entries,
and ab's counts must agree with what the kernel (ss) and the peer (the sink's
view of how each connection ended) saw.
"""

from __future__ import annotations

import json
import subprocess

from helpers import show

PORT = 5432
COUNT = 40
GREETING = "+OK\r\n"  # the sink greets; the client reads it, writes PING, closes


def client_argv(program, count: int = COUNT) -> list[str]:
    # Per connection: connect, write "PING\n", read the 5-byte greeting, close
    # (gracefully: the client closes first and keeps the TIME_WAIT).
    return [program("short_conn_client"), "-q", "PING", "-e", str(len(GREETING)), "127.0.0.1",
            str(PORT), str(count)]


def ab(ns, cli, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return ns.run([str(cli), "ab", *args], timeout=timeout)


def test_ab_close_rst_arm_leaves_fewer_time_wait(make_netns, cli, lib, program, tmp_path):
    ns = make_netns((40000, 40999))  # room for every arm's entries: nothing runs out
    sink = ns.start_sink(program("sink_server"), PORT, greeting=GREETING, timeout_ms=120000)
    keep = tmp_path / "runs"
    r = ab(ns, cli, "--a", "", "--b", "TCPFIX_CLOSE=rst", "-n", "3", "--json", "--dir", str(keep),
           "--library", str(lib), "--", *client_argv(program))
    assert r.returncode == 0, show(r)
    e = json.loads(r.stdout)

    assert e["order"] == ["a1", "b1", "a2", "b2", "a3", "b3"]
    assert e["arms"]["b"]["variables"] == {"TCPFIX_CLOSE": "rst"}
    for arm in ("a", "b"):
        runs = e["arms"][arm]["runs"]
        assert [run["run"] for run in runs] == [1, 2, 3]
        for run in runs:
            assert run["exit_status"] == 0 and run["processes"] == 1, run
            assert run["counters"]["connects"] == COUNT and run["connect_errors"] == {}, run
    a, b = e["arms"]["a"], e["arms"]["b"]
    # Control: the client closes first, every connection leaves a TIME_WAIT
    # entry (now and then the kernel kills one early: README.md here).
    for run in a["runs"]:
        assert COUNT - 3 <= run["time_wait_left"] <= COUNT, run
        assert run["counters"]["closes_rst"] == 0
    # rst: none left, every close an RST.
    for run in b["runs"]:
        assert run["time_wait_left"] == 0 and run["counters"]["closes_rst"] == COUNT, run
    assert a["median"]["time_wait_left"] > b["median"]["time_wait_left"] == 0
    assert b["median"]["counters"]["closes_rst"] == COUNT
    assert a["median"]["counters"]["connects"] == b["median"]["counters"]["connects"] == COUNT

    # Independent witnesses. The kernel: every entry left in the namespace is
    # one arm a counted (they live 60 s; the test is shorter).
    assert ns.time_wait_count(PORT) == sum(run["time_wait_left"] for run in a["runs"])
    # The peer: a's connections ended with FIN, b's with RST, all 6 x COUNT
    # of them having delivered the request.
    ends = sink.wait_ends(6 * COUNT)
    assert all(end["tail"].endswith("PING\n") for end in ends), ends[:3]
    by_end = {}
    for end in ends:
        by_end[end["end"]] = by_end.get(end["end"], 0) + 1
    assert by_end == {"EOF": 3 * COUNT, "ECONNRESET": 3 * COUNT}, by_end

    # The stats files, tagged per arm, are kept in --dir.
    files = sorted(p.name for p in keep.glob("*.json"))
    assert len(files) == 6 and {f.split("-")[0] for f in files} == {"a", "b"}, files
    for f in keep.glob("b-*.json"):
        assert json.loads(f.read_text())["tag"] == "b"
    assert (keep / "a-1.out").read_text().strip().endswith('"failures":{}}'), \
        (keep / "a-1.out").read_text()


def test_ab_prints_a_side_by_side_table_and_a_plot(make_netns, cli, program, tmp_path):
    ns = make_netns((40000, 40999))
    ns.start_sink(program("sink_server"), PORT, greeting=GREETING, timeout_ms=120000)
    png = tmp_path / "ab.png"
    have_matplotlib = subprocess.run(["/usr/bin/python3", "-c", "import matplotlib"],
                                     capture_output=True).returncode == 0
    r = ab(ns, cli, "--a", "TCPFIX_CLOSE=keep", "--b", "TCPFIX_CLOSE=rst TCPFIX_LOG=warn", "-n",
           "2", "--plot", str(png), "--", *client_argv(program, 20))
    if not have_matplotlib:
        # Refused before anything runs, saying what to install.
        assert r.returncode == 3 and "python3-matplotlib" in r.stderr, show(r)
        assert not png.exists()
        return
    assert r.returncode == 0, show(r)
    rows = {}
    for line in r.stdout.splitlines():
        parts = line.split("  ")
        parts = [p.strip() for p in parts if p.strip()]
        if len(parts) >= 3:
            rows[parts[0]] = parts[1:]
    assert rows["median (min-max)"] == ["a", "b"], r.stdout
    assert rows["connects"] == ["20", "20"], r.stdout
    assert rows["connect errors"] == ["0", "0"], r.stdout
    assert rows["connect timeouts"] == ["0", "0"] and rows["connect retries"] == ["0", "0"]
    assert rows["RSTs sent (closes_rst)"] == ["0", "20"], r.stdout
    assert rows["exit status of each run"] == ["0 0", "0 0"], r.stdout
    assert rows["TIME_WAIT left on the host"][1] == "0", r.stdout
    assert int(rows["TIME_WAIT left on the host"][0].split()[0]) >= 17, r.stdout
    assert "wall time (s)" in rows
    assert "a: TCPFIX_CLOSE=keep" in r.stdout and "b: TCPFIX_CLOSE=rst TCPFIX_LOG=warn" in r.stdout
    assert "in this order: a1 b1 a2 b2" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert png.stat().st_size > 10_000


def test_ab_sums_stats_over_a_runs_processes(make_netns, cli, program):
    """A run that starts the client twice (through sh): one stats file per
    process, summed."""
    ns = make_netns((40000, 40999))
    ns.start_sink(program("sink_server"), PORT, greeting=GREETING, timeout_ms=120000)
    client = " ".join(client_argv(program, 10))
    r = ab(ns, cli, "--a", "", "--b", "TCPFIX_CLOSE=rst", "-n", "1", "--json", "--", "/bin/sh",
           "-c", f"{client} && {client}")
    assert r.returncode == 0, show(r)
    e = json.loads(r.stdout)
    for arm in ("a", "b"):
        run = e["arms"][arm]["runs"][0]
        assert run["counters"]["connects"] == 20, run
        assert run["processes"] >= 2, run  # the two clients (and sh, which connects nothing)
    assert e["arms"]["b"]["runs"][0]["counters"]["closes_rst"] == 20
    assert e["arms"]["b"]["runs"][0]["time_wait_left"] == 0


def test_ab_counts_connect_errors_by_errno(make_netns, cli, program):
    """Nothing listens: every connect is refused, counted under ECONNREFUSED."""
    ns = make_netns((40000, 40999))
    r = ab(ns, cli, "--a", "", "--b", "TCPFIX_RECONNECT_BACKOFF=1ms:2ms", "-n", "1", "--json",
           "--", *client_argv(program, 5))
    assert r.returncode == 0, show(r)
    e = json.loads(r.stdout)
    for arm in ("a", "b"):
        assert e["arms"][arm]["runs"][0]["connect_errors"] == {"ECONNREFUSED": 5}
        assert e["arms"][arm]["median"]["connect_errors_by_errno"] == {"ECONNREFUSED": 5}
        assert e["arms"][arm]["median"]["connect_errors"] == 5


def test_ab_refuses_bad_variables_before_running_anything(make_netns, cli, tmp_path):
    ns = make_netns()
    marker = tmp_path / "ran"
    cmd = ["--", "/bin/sh", "-c", f"touch {marker}"]
    r = ab(ns, cli, "--a", "", "--b", "TCPFIX_CLOSE=rsst", *cmd)
    assert r.returncode == 2, show(r)
    assert r.stderr.startswith('tcpfix: TCPFIX_CLOSE="rsst": expected'), show(r)
    r = ab(ns, cli, "--a", "TCPFIX_CLOSED=rst", "--b", "", *cmd)
    assert r.returncode == 2 and "did you mean TCPFIX_CLOSE?" in r.stderr, show(r)
    for bad, why in [("TCPFIX_STATS=/tmp/x.json", "set by ab itself"),
                     ("TCPFIX_TAG=x", "set by ab itself"),
                     ("CLOSE", "expected VARIABLE=VALUE"),
                     ("TCPFIX_CLOSE='rst", "unterminated")]:
        r = ab(ns, cli, "--a", bad, "--b", "", *cmd)
        assert r.returncode == 2 and why in r.stderr, (bad, show(r))
    r = ab(ns, cli, "--a", "", "--b", "")
    assert r.returncode == 2 and "no command given" in r.stderr, show(r)
    assert not marker.exists(), "ab ran the command although a variable was refused"


def test_ab_timeout_ends_a_run(make_netns, cli):
    ns = make_netns()
    r = ab(ns, cli, "--a", "", "--b", "", "-n", "1", "--timeout", "300ms", "--json", "--",
           "/bin/sleep", "30", timeout=30)
    assert r.returncode == 0, show(r)
    e = json.loads(r.stdout)
    for arm in ("a", "b"):
        run = e["arms"][arm]["runs"][0]
        assert run["timed_out"] is True and run["exit_status"] == 128 + 15, run
        assert run["wall_s"] < 5, run
