"""Shared helpers of the integration tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import HERE, PYTHON, Netns, json_lines, parse_summary, read_stats

MiB = 1 << 20
PROBERS = ["c", "python-blocking", "python-timeout"]


def prober_argv(program, kind: str, host: str, port: int, count: int) -> list[str]:
    """The incident-000 loop: the C port_probe, or the same loop in Python
    (blocking connect, or connect with a timeout = non-blocking + poll)."""
    if kind == "c":
        return [program("port_probe"), host, str(port), str(count)]
    mode = kind.split("-", 1)[1]
    return [PYTHON, str(HERE / "py_prober.py"), host, str(port), str(count), mode]


def run_prober(ns: Netns, program, kind: str, host: str, port: int, count: int,
               env: dict[str, str] | None = None, timeout: float = 30):
    """Runs a prober loop in ns; returns (summary dict, CompletedProcess)."""
    r = ns.run(prober_argv(program, kind, host, port, count), env=env, timeout=timeout)
    assert r.returncode == 0, f"prober exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return parse_summary(r.stdout), r


def settled_time_wait(ns: Netns, dport: int | None = None) -> list[str]:
    """TIME_WAIT entries once the close handshakes in flight have finished:
    waits a moment, then until two reads 100 ms apart agree (max ~2 s).
    Entries never disappear this fast (they live 60 s), so this cannot hide
    one."""
    time.sleep(0.2)
    last = ns.time_wait(dport)
    for _ in range(18):
        time.sleep(0.1)
        now = ns.time_wait(dport)
        if len(now) == len(last):
            return now
        last = now
    return last


def only_stats_file(stats_dir: Path, pattern: str = "*.json") -> tuple[int, dict]:
    """The one stats file in stats_dir; returns (pid from its name, content)."""
    files = sorted(stats_dir.glob(pattern))
    assert len(files) == 1, f"expected one stats file in {stats_dir}, found {[f.name for f in files]}"
    pid = int(files[0].stem.rsplit("-", 1)[1])
    return pid, read_stats(files[0])


def stats_of(stats_dir: Path, pid: int, prefix: str = "stats") -> dict:
    return read_stats(stats_dir / f"{prefix}-{pid}.json")


def show(r) -> str:
    return f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


__all__ = [
    "MiB", "PROBERS", "prober_argv", "run_prober", "settled_time_wait", "only_stats_file",
    "stats_of", "show", "json_lines", "parse_summary", "read_stats",
]
