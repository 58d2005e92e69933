"""TCPFIX_STATS ending in ".prom": a real process's counters in Prometheus's
text exposition format, checked by a strict validator of the format written
here (no PyPI) and by `promtool check metrics` (Debian's prometheus package),
and compared with the JSON the same workload writes.

The workload runs in a network namespace of its own: 25 closed ports on
127.0.0.1 refuse 1, 2, ... 25 connects each, and a listener accepts 30, so
the 20 busiest destinations are named and the 6 quietest fold into "other".
"""

from __future__ import annotations

import json
import math
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, read_stats, tcpfix_env

# ---- the validator ---------------------------------------------------------------

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
# Go's strconv.ParseFloat as the format uses it, plus the special values.
FLOAT = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?Inf|NaN"
HELP_RE = re.compile(rf"# HELP ({METRIC_NAME}) ((?:[^\\\n]|\\[\\n])*)")
TYPE_RE = re.compile(rf"# TYPE ({METRIC_NAME}) (counter|gauge|histogram|summary|untyped)")
SAMPLE_RE = re.compile(rf"({METRIC_NAME})(?:\{{(.*)\}})? ({FLOAT})(?: (-?[0-9]+))?")
LABEL_RE = re.compile(rf"({LABEL_NAME})=({LABEL_VALUE})")
SUFFIXES = {"summary": ("", "_sum", "_count"), "histogram": ("_bucket", "_sum", "_count")}


class ExpositionError(AssertionError):
    pass


def unescape_label(quoted: str) -> str:
    return re.sub(r'\\([\\"n])', lambda m: "\n" if m[1] == "n" else m[1], quoted[1:-1])


def check_exposition(text: str) -> dict[str, dict]:
    """Parses Prometheus text format 0.0.4 strictly. Returns
    {family: {"type", "help", "samples": {frozenset(labels.items()): value}}}
    or raises ExpositionError naming the line. Stricter than the format where
    node_exporter's textfile collector is: no timestamps; and where this
    project is: every family has HELP and TYPE, counters end in _total."""
    if not text.endswith("\n"):
        raise ExpositionError("the text does not end with a newline")
    if "\r" in text:
        raise ExpositionError("carriage return in the text")
    families: dict[str, dict] = {}
    closed: set[str] = set()  # families whose samples are over: they must be contiguous
    current = None
    for no, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {no}: {line!r}"
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 2 and parts[1] == "HELP":
                m = HELP_RE.fullmatch(line)
                if not m:
                    raise ExpositionError(f"bad HELP, {where}")
                fam = families.setdefault(m[1], {"samples": {}})
                if "help" in fam:
                    raise ExpositionError(f"second HELP for {m[1]}, {where}")
                if fam["samples"]:
                    raise ExpositionError(f"HELP after samples, {where}")
                fam["help"] = m[2]
            elif len(parts) >= 2 and parts[1] == "TYPE":
                m = TYPE_RE.fullmatch(line)
                if not m:
                    raise ExpositionError(f"bad TYPE, {where}")
                fam = families.setdefault(m[1], {"samples": {}})
                if "type" in fam:
                    raise ExpositionError(f"second TYPE for {m[1]}, {where}")
                if fam["samples"]:
                    raise ExpositionError(f"TYPE after samples, {where}")
                fam["type"] = m[2]
            continue  # any other comment is allowed
        m = SAMPLE_RE.fullmatch(line)
        if not m:
            raise ExpositionError(f"not a sample, {where}")
        name, labels_text, value, timestamp = m[1], m[2], m[3], m[4]
        if timestamp is not None:
            raise ExpositionError(f"timestamp (the textfile collector refuses them), {where}")
        family = None
        for fname, fam in families.items():
            for suffix in SUFFIXES.get(fam.get("type", ""), ("",)):
                if name == fname + suffix:
                    family = fname
        if family is None or "type" not in families[family]:
            raise ExpositionError(f"sample before its family's TYPE, {where}")
        if "help" not in families[family]:
            raise ExpositionError(f"family without HELP, {where}")
        if family != current:
            if family in closed:
                raise ExpositionError(f"family {family} is not contiguous, {where}")
            if current is not None:
                closed.add(current)
            current = family
        labels: dict[str, str] = {}
        rest = labels_text or ""
        while rest:
            lm = LABEL_RE.match(rest)
            if not lm:
                raise ExpositionError(f"bad label syntax at {rest!r}, {where}")
            if lm[1].startswith("__"):
                raise ExpositionError(f"reserved label name {lm[1]}, {where}")
            if lm[1] in labels:
                raise ExpositionError(f"label {lm[1]} twice, {where}")
            labels[lm[1]] = unescape_label(lm[2])
            rest = rest[lm.end():]
            if rest:
                if not rest.startswith(",") or rest == ",":
                    raise ExpositionError(f"labels not separated by ',', {where}")
                rest = rest[1:]
        series = (name, frozenset(labels.items()))
        fam = families[family]
        if series in fam["samples"]:
            raise ExpositionError(f"duplicate series, {where}")
        number = float(value.replace("Inf", "inf"))
        if fam["type"] == "counter":
            if not name.endswith("_total"):
                raise ExpositionError(f"counter not ending in _total, {where}")
            if math.isnan(number) or number < 0:
                raise ExpositionError(f"counter below zero, {where}")
        elif name.endswith("_total"):
            raise ExpositionError(f"{fam['type']} named like a counter, {where}")
        fam["samples"][series] = number
    for name, fam in families.items():
        if "type" not in fam or "help" not in fam:
            raise ExpositionError(f"family {name} lacks HELP or TYPE")
    return families


def series(families: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in families[name]["samples"].items() if n == name}


def value(families: dict, name: str, **labels: str) -> float:
    for (n, ls), v in families[name]["samples"].items():
        if n == name and dict(ls) == labels:
            return v
    raise KeyError(f"{name}{labels} not in {list(families[name]['samples'])}")


GOOD = "# HELP a_total A thing.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n"


@pytest.mark.parametrize("text, problem", [
    (GOOD[:-1], "newline"),
    (GOOD + 'a_total{x="1"} 4\n', "duplicate"),
    (GOOD.replace("counter", "gauge"), "named like a counter"),
    ("# HELP a A.\n# TYPE a counter\na 1\n", "_total"),
    ("# TYPE a_total counter\na_total 1\n", "HELP"),
    ("# HELP a_total A.\na_total 1\n", "TYPE"),
    (GOOD + "# TYPE a_total counter\n", "second TYPE"),
    (GOOD + "# HELP a_total A.\n", "second HELP"),
    (GOOD.replace('x="1"', 'x="a"b"'), "label"),
    (GOOD.replace('x="1"', 'x="a\\tb"'), "label"),
    (GOOD.replace('x="1"', 'x="1",x="2"'), "twice"),
    (GOOD.replace('x="1"', 'x="1",'), "separated"),
    (GOOD.replace('x="1"', '__x="1"'), "reserved"),
    (GOOD.replace('x="1"', '1x="1"'), "label"),
    (GOOD.replace(" 3\n", " three\n"), "not a sample"),
    (GOOD.replace(" 3\n", " 3 1700000000000\n"), "timestamp"),
    (GOOD.replace(" 3\n", " -3\n"), "below zero"),
    (GOOD.replace("a_total{", "a-b_total{"), "not a sample"),
    (GOOD + "# HELP b B.\n# TYPE b gauge\nb 1\na_total{x=\"2\"} 1\n", "contiguous"),
    (GOOD.replace("\n", "\r\n"), "carriage"),
])
def test_validator_refuses_what_the_format_forbids(text: str, problem: str):
    check_exposition(GOOD)  # and accepts what it allows
    with pytest.raises(ExpositionError, match=problem):
        check_exposition(text)


# ---- a real process ---------------------------------------------------------------

CLOSED_PORTS = list(range(7001, 7026))  # port 7000+k refuses k connects
LISTEN_PORT = 7100  # accepts ACCEPTED connects
ACCEPTED = 30

WORKLOAD = r"""
import os, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[3])))
srv.listen(64)
for port in map(int, sys.argv[1].split(",")):
    for _ in range(port - 7000):
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
            sys.exit(f"port {port} is open")
        except ConnectionRefusedError:
            pass
        s.close()
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    s.connect(srv.getsockname())
    c, _ = srv.accept()
    c.close()
    s.close()
print(os.getpid())
"""


def run_workload(netns, lib, stats_path: Path, **variables: str) -> int:
    env = tcpfix_env(lib, stats=str(stats_path), **variables)
    p = netns.run([PYTHON, "-c", WORKLOAD, ",".join(map(str, CLOSED_PORTS)), str(ACCEPTED),
                   str(LISTEN_PORT)], env=env, timeout=60)
    assert p.returncode == 0, f"workload failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return int(p.stdout)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is required (apt-get install prometheus)", pytrace=False)
    return found


def test_prom_file_is_strict_exposition_format_with_top_destinations(netns, lib, stats_dir):
    log = stats_dir / 'odd "name" \\ here.log'  # label values must be escaped
    pid = run_workload(netns, lib, stats_dir / "arm-%p.prom", tag="prom-arm", log_file=str(log))
    port = LISTEN_PORT
    path = stats_dir / f"arm-{pid}.prom"
    assert path.exists(), f"no {path}: {sorted(p.name for p in stats_dir.iterdir())}"
    # For the textfile collector, which runs as another user.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not list(stats_dir.glob("*.tmp.*")), "a temporary file was left behind"
    text = path.read_text()
    fams = check_exposition(text)

    p = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout + p.stderr == "", \
        f"promtool check metrics:\n{p.stdout}{p.stderr}\n{text}"

    assert all(name.startswith("tcpfix_") for name in fams), sorted(fams)
    # The PID only in tcpfix_info; tag on every sample.
    assert value(fams, "tcpfix_info", tag="prom-arm", pid=str(pid)) == 1
    for name, fam in fams.items():
        for (_, labels) in fam["samples"]:
            keys = dict(labels)
            assert keys.get("tag") == "prom-arm", (name, keys)
            assert ("pid" in keys) == (name == "tcpfix_info"), (name, keys)
    assert value(fams, "tcpfix_policy_info", tag="prom-arm", variable="TCPFIX_LOG_FILE",
                 value=str(log)) == 1

    refused = sum(k - 7000 for k in CLOSED_PORTS)
    assert value(fams, "tcpfix_connects_total", tag="prom-arm") == refused + ACCEPTED
    assert value(fams, "tcpfix_connect_errors_total", tag="prom-arm",
                 errno="ECONNREFUSED") == refused
    assert value(fams, "tcpfix_connects_completed_total", tag="prom-arm") == ACCEPTED
    assert value(fams, "tcpfix_connect_latency_max_seconds", tag="prom-arm") > 0

    # The 20 busiest by connects: the listener (30), then ports 7025 .. 7007.
    connects = {dict(ls)["destination"]: v
                for ls, v in series(fams, "tcpfix_destination_connects_total").items()}
    failures = {dict(ls)["destination"]: v
                for ls, v in series(fams, "tcpfix_destination_failures_total").items()}
    named = {f"127.0.0.1:{port}": ACCEPTED}
    named.update({f"127.0.0.1:{k}": k - 7000 for k in range(7007, 7026)})
    quiet = sum(k - 7000 for k in range(7001, 7007))
    assert connects == {**named, "other": quiet}
    assert failures["other"] == quiet and failures[f"127.0.0.1:{port}"] == 0
    assert failures["127.0.0.1:7025"] == 25
    # In the file, busiest first.
    order = re.findall(r'^tcpfix_destination_connects_total\{.*destination="([^"]+)"\} ', text,
                       re.M)
    assert order[0] == f"127.0.0.1:{port}" and order[1] == "127.0.0.1:7025"
    assert order[-1] == "other"


def test_prom_and_json_count_the_same(netns, lib, stats_dir):
    """The same workload, once as JSON and once as .prom: the same figures."""
    run_workload(netns, lib, stats_dir / "same.json", tag="same")
    run_workload(netns, lib, stats_dir / "same.prom", tag="same")
    js = read_stats(stats_dir / "same.json")
    fams = check_exposition((stats_dir / "same.prom").read_text())
    assert stat.S_IMODE((stats_dir / "same.json").stat().st_mode) == 0o600  # JSON stays private
    for key in ("sockets", "connects", "connects_matched", "connect_timeouts", "closes",
                "closes_rst", "close_wait_reaped"):
        assert value(fams, f"tcpfix_{key}_total", tag="same") == js[key], key
    for errno_name, n in js["connect_errors"].items():
        assert value(fams, "tcpfix_connect_errors_total", tag="same", errno=errno_name) == n
    # JSON names every destination; the .prom file the top 20, the rest summed.
    by_count = sorted(((d["connects"], dest) for dest, d in js["destinations"].items()
                       if not dest.endswith(f":{LISTEN_PORT}")), reverse=True)
    assert len(js["destinations"]) == len(CLOSED_PORTS) + 1
    connects = {dict(ls)["destination"]: v
                for ls, v in series(fams, "tcpfix_destination_connects_total").items()}
    assert sum(connects.values()) == sum(d["connects"] for d in js["destinations"].values())
    assert len(connects) == 21
    assert by_count[0][1] in connects and by_count[-1][1] not in connects


def test_stats_without_prom_suffix_stay_json(netns, lib, stats_dir):
    run_workload(netns, lib, stats_dir / "plain.prom.json")
    js = json.loads((stats_dir / "plain.prom.json").read_text())
    assert js["connects"] == sum(k - 7000 for k in CLOSED_PORTS) + ACCEPTED
