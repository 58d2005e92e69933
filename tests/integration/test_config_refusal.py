"""A TCPFIX_* value that does not parse, or an unknown TCPFIX_* name, is
refused before the program's main runs: exactly one stderr line naming the
variable, the value and what was expected, and exit status 2 (SPEC.md). A
typo must never run the experiment silently without its policy."""

from __future__ import annotations

import subprocess

import pytest

from conftest import BASE_ENV


def run_preloaded(lib, variables: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**BASE_ENV, "LD_PRELOAD": str(lib), **variables}
    # /bin/echo prints if its main runs; it must not.
    return subprocess.run(["/bin/echo", "main ran"], env=env, capture_output=True, text=True,
                          timeout=10)


def assert_refused(r, first_words: str):
    assert r.returncode == 2, f"exit {r.returncode}, stderr {r.stderr!r}"
    assert r.stdout == "", f"the program's main ran: {r.stdout!r}"
    lines = r.stderr.split("\n")
    assert len(lines) == 2 and lines[1] == "", f"expected exactly one stderr line: {r.stderr!r}"
    assert lines[0].startswith(first_words), lines[0]


def test_malformed_duration_exact_message(lib):
    r = run_preloaded(lib, {"TCPFIX_CONNECT_TIMEOUT": "fast"})
    assert_refused(r, "tcpfix: ")
    assert r.stderr == ('tcpfix: TCPFIX_CONNECT_TIMEOUT="fast": '
                        "expected a duration such as 250ms or 2s\n")


@pytest.mark.parametrize("name, value", [
    ("TCPFIX_CLOSE", "reset"),
    ("TCPFIX_CLOSE", "rst-sometimes"),
    ("TCPFIX_CONNECT_TIMEOUT", "250"),
    ("TCPFIX_CONNECT_TIMEOUT", "-1s"),
    ("TCPFIX_CONNECT_RETRIES", "11"),
    ("TCPFIX_CONNECT_RETRIES", "two"),
    ("TCPFIX_BIND_NO_PORT", "yes"),
    ("TCPFIX_SOURCE_ADDRS", "not-an-address"),
    ("TCPFIX_PORT_RANGE", "60000-50000"),
    ("TCPFIX_RECONNECT_BACKOFF", "10ms"),
    ("TCPFIX_CONNECT_RATE", "fast"),
    ("TCPFIX_REAP_CLOSE_WAIT", "soon"),
    ("TCPFIX_MATCH", "300.1.2.3:80"),
    ("TCPFIX_MATCH", "127.0.0.1:99999"),
    ("TCPFIX_LOG", "loud"),
    ("TCPFIX_DISABLE", "yes"),
])
def test_malformed_value_refused_before_main(lib, name, value):
    r = run_preloaded(lib, {name: value})
    assert_refused(r, f'tcpfix: {name}="{value}": expected ')


def test_malformed_value_refused_next_to_valid_ones(lib):
    r = run_preloaded(lib, {"TCPFIX_CLOSE": "rst", "TCPFIX_LOG": "debug",
                            "TCPFIX_CONNECT_RETRIES": "lots"})
    assert_refused(r, 'tcpfix: TCPFIX_CONNECT_RETRIES="lots": expected ')


@pytest.mark.parametrize("name, value", [
    ("TCPFIX_CLOSED", "rst"),
    ("TCPFIX_STAT", "/tmp/x.json"),
    ("TCPFIX_CONNECT_TIMEOUTS", "1s"),
])
def test_unknown_variable_refused(lib, name, value):
    r = run_preloaded(lib, {name: value, "TCPFIX_CLOSE": "rst"})
    assert_refused(r, "tcpfix: ")
    assert name in r.stderr, r.stderr


def test_valid_variables_let_main_run(lib):
    r = run_preloaded(lib, {"TCPFIX_CLOSE": "rst", "TCPFIX_CONNECT_TIMEOUT": "250ms",
                            "TCPFIX_MATCH": "127.0.0.1:5000,[::1]:6379,:7000,10.0.0.0/8"})
    assert (r.returncode, r.stdout, r.stderr) == (0, "main ran\n", "")
