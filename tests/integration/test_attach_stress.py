"""Safety: 16 clients in a cgroup churn connections for about a minute while
`tcpfix attach` is started and stopped 20 times on it, with every policy it
carries (SIGTERM, SIGINT, and twice SIGKILL).

What must hold:
- nothing outside is touched: a client outside the cgroup (to the matched
  destination) and clients in the cgroup to a destination outside --match
  keep every TIME_WAIT entry they make and never see an error; the servers
  never see a reset from them;
- the clients in the cgroup see no error but what a policy explains;
- every daemon exits 0 on SIGTERM/SIGINT, says nothing of a crash, and after
  each stop (SIGKILL included) nothing is attached; at the end no program,
  no link of attach's is loaded at all.
"""

from __future__ import annotations

import signal
import time

from attach_env import (Attach, bpf_attached, last_json, popen_in, sockets, start_server,
                        tcpfix_links, tcpfix_programs)

CYCLES = 20
MATCHED_CLIENTS = 13
UNMATCHED_CLIENTS = 2
CHURN_MS = 55000        # the clients in the cgroup, and the daemon's 20 cycles
OUTSIDE_MS = 50000      # < 60 s: every TIME_WAIT entry the outsiders made still stands
INTERVAL_MS = 20


def tw_from(ns, addr: str) -> int:
    return len(sockets(ns, "time-wait", f"( src {addr} )"))


def test_attach_detach_twenty_times_under_churn(make_netns, make_cgroup, program, go_client,
                                                attach_cli):
    ns = make_netns((40000, 60999))
    cg = make_cgroup()
    sinks = {port: start_server(ns, program, port, timeout_ms=120000) for port in (5000, 5001)}
    # The leaker's server greets and closes: its sockets end in CLOSE_WAIT.
    start_server(ns, program, 5004, greeting="hi\n", close_after_ms=20, timeout_ms=120000)

    clients = [popen_in(ns, [go_client, "churn", "127.0.0.1", "5000", str(CHURN_MS),
                             str(INTERVAL_MS)], cgroup=cg) for _ in range(MATCHED_CLIENTS)]
    unmatched = [popen_in(ns, [go_client, "churn", "127.0.0.1", "5001", str(OUTSIDE_MS),
                               str(INTERVAL_MS)], env={"LOCAL_ADDR": "127.0.0.8"}, cgroup=cg)
                 for _ in range(UNMATCHED_CLIENTS)]
    leaker = popen_in(ns, [go_client, "leak", "127.0.0.1", "5004", str(CHURN_MS), "20"],
                      cgroup=cg)
    outsider = popen_in(ns, [go_client, "churn", "127.0.0.1", "5000", str(OUTSIDE_MS),
                             str(INTERVAL_MS)], env={"LOCAL_ADDR": "127.0.0.9"})
    assert len(clients) + len(unmatched) + 1 == 16

    args = ["--cgroup", str(cg.path), "--close", "rst", "--reap-close-wait", "100ms",
            "--connect-timeout", "50ms", "--source-addrs", "127.0.0.2,127.0.0.3",
            "--match", "127.0.0.1:5000,127.0.0.1:5004"]
    started = time.monotonic()
    budget = CHURN_MS / 1000 - 5
    for i in range(CYCLES):
        d = Attach(ns, attach_cli, args)
        assert len(bpf_attached(cg.path)) == 3
        time.sleep(max(0.2, (started + budget * (i + 1) / CYCLES) - time.monotonic()))
        sig = signal.SIGKILL if i in (6, 13) else (signal.SIGINT if i % 2 else signal.SIGTERM)
        rc = d.stop(sig)
        text = d.text()
        if sig == signal.SIGKILL:
            assert rc == -signal.SIGKILL
            deadline = time.monotonic() + 3
            while bpf_attached(cg.path) and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            assert rc == 0, text
            assert "detached from" in text, text
        assert bpf_attached(cg.path) == [], (i, text)
        for bad in ("terminate called", "Segmentation", "Aborted", "error:"):
            assert bad not in text, text
        warnings = [l for l in text.splitlines() if " warn: " in l and " leak: " not in l]
        assert warnings == [], warnings
        assert all(p.poll() is None for p in clients), f"a client died during cycle {i}"

    results = [last_json(p.communicate(timeout=60)[0]) for p in clients]
    outside = last_json(outsider.communicate(timeout=60)[0])
    unmatched_results = [last_json(p.communicate(timeout=60)[0]) for p in unmatched]
    leak = last_json(leaker.communicate(timeout=60)[0])
    elapsed = time.monotonic() - started
    assert tcpfix_programs() == [] and tcpfix_links() == []

    # Outside: every connection made, every TIME_WAIT entry still there.
    for r in [outside, *unmatched_results]:
        assert r["other"] == 0 and r["eaddrnotavail"] == 0 and r["errors"] == {}, r
    assert tw_from(ns, "127.0.0.9") == outside["ok"], outside
    assert tw_from(ns, "127.0.0.8") == sum(r["ok"] for r in unmatched_results)
    for port in (5000, 5001):
        resets = [e for e in sinks[port].ends
                  if e["peer"].startswith(("127.0.0.8:", "127.0.0.9:")) and e["end"] != "EOF"]
        assert resets == [], resets[:5]
    # In the cgroup: no error at all (ports to spare, nothing reset).
    for r in results:
        assert r["ok"] > 100 and r["errors"] == {}, r
    assert leak["errors"] == {}, leak
    attached_sources = sum(r["sources"].get(a, 0) for r in results
                           for a in ("127.0.0.2", "127.0.0.3"))
    total = sum(r["ok"] for r in results)
    print(f"\n{CYCLES} cycles in {elapsed:.1f} s; {total} matched connections "
          f"({attached_sources} bound to the source addresses while attached), outsider "
          f"{outside['ok']}, unmatched {sum(r['ok'] for r in unmatched_results)}, leaker "
          f"{leak['ok']}")
    assert 0 < attached_sources < total
