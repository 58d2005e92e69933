"""Smoke pass of the benchmark driver (bench/run_bench.py --quick), so the
benchmarks cannot rot unnoticed: the driver runs every section end to end on
the built tree and writes a report with the keys the README and the chart
are made from.

Nothing here looks at a figure: a benchmark on a shared CI machine measures
the machine as much as the code, and a test that asserted timings would be
flaky. Values are only checked to be numbers where numbers are due.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD, PYTHON, REPO

DRIVER = REPO / "bench" / "run_bench.py"
OPS = {"close_file", "socket_close", "connect_close", "dup2_socket", "dup2_swap", "dup2_file"}
PRELOADED = {"preload", "disable", "track", "close_rst", "all", "share"}


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_summary(s: dict, where: str) -> None:
    assert set(s) >= {"median", "min", "max", "n"}, f"{where}: not a summary: {s}"
    if s["n"]:
        assert all(is_number(s[k]) for k in ("median", "min", "max")), f"{where}: {s}"
        assert s["min"] <= s["median"] <= s["max"], f"{where}: {s}"


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory, lib) -> tuple[dict, Path]:
    if os.geteuid() != 0:
        pytest.fail("the benchmark smoke pass needs root (network namespaces)", pytrace=False)
    out = tmp_path_factory.mktemp("bench")
    r = subprocess.run([PYTHON, str(DRIVER), "--quick", "--build-dir", str(BUILD), "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"run_bench.py --quick failed (exit {r.returncode}):\n{r.stderr[-6000:]}"
    report_path = out / "report.json"
    assert report_path.is_file(), f"no report.json in {out}:\n{r.stderr[-3000:]}"
    return json.loads(report_path.read_text()), out


def test_report_has_every_section(quick_report):
    report, _ = quick_report
    assert report["quick"] is True
    assert set(report) >= {"schema", "machine", "command", "started_utc", "elapsed_s", "load", "hooks",
                           "callgrind", "policies", "memory", "targets", "chart"}
    assert set(report["machine"]) >= {"nproc", "kernel", "cpu_model"}
    assert set(report["policies"]) == {"short_connections", "syn_loss", "storm"}


def test_hook_costs_cover_every_loop_and_configuration(quick_report):
    report, _ = quick_report
    ops = report["hooks"]["ops"]
    assert set(ops) == OPS
    for op, by_config in ops.items():
        assert set(by_config) == {"none", "none_again"} | PRELOADED, op
        for cfg, metrics in by_config.items():
            for metric in ("wall", "cpu"):
                check_summary(metrics[metric]["ns_per_iter"], f"hooks {op} {cfg} {metric}")
                check_summary(metrics[metric]["ratio_to_unpreloaded"], f"hooks {op} {cfg} {metric} ratio")
    paired = report["hooks"]["paired"]["ops"]
    assert set(paired) == OPS
    for op, by_config in paired.items():
        assert set(by_config) == {"none"} | PRELOADED, op
        for cfg, metrics in by_config.items():
            for metric in ("wall", "cpu"):
                check_summary(metrics[metric]["ratio_to_direct"], f"paired {op} {cfg} {metric}")
    cg = report["callgrind"]
    if "unavailable" in cg:  # valgrind not installed: the report must say so
        assert "valgrind" in cg["unavailable"]
    else:
        assert cg["ops"], "callgrind section without counts"
        for op, by_config in cg["ops"].items():
            assert op in OPS
            assert "none" in by_config
            for cfg, entry in by_config.items():
                assert is_number(entry["instructions_per_iter"]) and is_number(entry["added_instructions"])


def test_targets_are_judged(quick_report):
    report, _ = quick_report
    names = {(t["name"], t["config"]) for t in report["targets"]}
    assert {c for _, c in names} == PRELOADED
    for t in report["targets"]:
        assert set(t) >= {"name", "config", "limit", "value", "met"}
        assert t["met"] in (True, False, None)
        if t["met"] is not None:
            assert is_number(t["value"])
    # the connect-loop time target is always measured (the hooks section always runs)
    for t in report["targets"]:
        if t["name"] == "added time, socket+connect+close loop":
            assert t["met"] is not None
            check_summary(t["paired_cpu_ratio"], f"target {t['config']}")


def test_policy_sections_have_their_arms(quick_report):
    report, _ = quick_report
    pol = report["policies"]
    rate = pol["short_connections"]
    assert set(rate["arms"]) == {"baseline", "close_rst", "raw", "raw_probed", "source_addrs_1",
                                 "source_addrs_2", "source_addrs_4"}
    for arm, a in rate["arms"].items():
        check_summary(a["ok_per_s_window"], f"rate {arm}")
        check_summary(a["ok_per_s_steady"], f"rate {arm} steady")
    assert set(rate["ratios"]) >= {"close_rst_vs_raw", "close_rst_vs_raw_probed", "raw_probed_vs_raw",
                                   "close_rst_vs_baseline", "source_addrs_4_vs_1"}
    # The probed arm made its connections with the RST (no TIME_WAIT to stop it).
    assert rate["arms"]["raw_probed"]["ok_per_s_window"]["median"] > 0
    assert rate["arms"]["raw_probed"]["long_run_bound_per_s"] is None

    syn = pol["syn_loss"]
    assert set(syn["levels"]) == {"loss_10", "loss_20"}
    for level in syn["levels"].values():
        assert set(level["arms"]) == {"no_deadline", "deadline"}
        for arm, a in level["arms"].items():
            check_summary(a["p50_ms"], f"syn {arm} p50")
            check_summary(a["p99_ms"], f"syn {arm} p99")

    storm = pol["storm"]
    assert set(storm["arms"]) == {"no_policy", "storm_policies"}
    for arm, a in storm["arms"].items():
        check_summary(a["connects_per_s"], f"storm {arm}")
        check_summary(a["ports_held_per_s"], f"storm {arm}")


def test_memory_is_reported_and_extrapolation_labelled(quick_report):
    report, _ = quick_report
    mem = report["memory"]
    n = mem["sockets_measured"]
    assert is_number(n) and n > 0
    for cfg in ("preload", "track"):
        rss = mem[cfg]["rss_kb"]
        check_summary(rss["added_idle_kb"], f"memory {cfg} idle")
        check_summary(rss[f"added_with_{n}_sockets_kb"], f"memory {cfg} sockets")
        check_summary(rss["extrapolated_added_with_100000_sockets_kb"], f"memory {cfg} extrapolated")
    assert "EXTRAPOLATED" in mem["method"]


def test_chart_and_summary_written(quick_report):
    report, out = quick_report
    if report["chart"] is None:  # matplotlib not installed: the report must say so
        assert "matplotlib" in report["chart_unavailable"]
    else:
        png = out / report["chart"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    summary = (out / "summary.md").read_text()
    assert "Targets:" in summary and "Machine:" in summary


def test_close_latency_is_reported_for_both_arms(quick_report):
    report, _ = quick_report
    cl = report["closelat"]
    assert set(cl["close_us"]) == {"none", "close_rst"}
    for cfg, by_key in cl["close_us"].items():
        assert set(by_key) == {"p50", "p90", "p99", "max", "mean"}, cfg
        for key, s in by_key.items():
            check_summary(s, f"closelat {cfg} {key}")
