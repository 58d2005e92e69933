"""TCPFIX_SHARE's segment: /dev/shm/tcpfix-<uid>-<name>.v1, 0600, one per
user, listed by `tcpfix top`. A segment that cannot be trusted (a symbolic
link, another user's, open to others, truncated, altered, of another layout
version, not a share at all) gives one warning and the process paces on its
own, the file untouched; a working one delays the next process; a full table
warns once; a set-user-ID process ignores the share. The pools are in
test_share_pool.py, `tcpfix top` in test_share_top.py, PHP-FPM in
test_share_php.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import CLI, PYTHON, tcpfix_env
from helpers import show
from share_env import segment_path, share_name, top_json  # noqa: F401
from test_safety import NOBODY, probe_result, run_as_nobody, stress_bin, trusted_lib, world_dir  # noqa: F401

SEGMENT_SIZE = 4096 + 1024 * 128 + 1024 * 64

REFUSED_CLIENT = r"""
import json, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
out = []
for _ in range(n):
    t0 = time.monotonic()
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port)); r = "ok"
    except OSError as e:
        r = e.__class__.__name__
    s.close()
    out.append([round(time.monotonic() - t0, 4), r])
print(json.dumps(out))
"""


def refused_connects(ns, env, port=7400, n=1):
    """n connects to a refusing port in one Python process: [[seconds, result], ...]."""
    r = ns.run([PYTHON, "-c", REFUSED_CLIENT, str(port), str(n)], env=env, timeout=30)
    assert r.returncode == 0, show(r)
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def share_warnings(stderr: str, name: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith("tcpfix[") and f"TCPFIX_SHARE={name}" in l]


# -- the segment ------------------------------------------------------------------------------------

def test_segment_is_private_per_user_and_listed(netns, lib, share_name, world_dir):
    env = tcpfix_env(lib, share=share_name, reconnect_backoff="10ms:20ms")
    got, err = refused_connects(netns, env, n=3)
    assert [r for _, r in got] == ["ConnectionRefusedError"] * 3
    assert share_warnings(err, share_name) == [], err
    path = segment_path(share_name)
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == 0 and st.st_size == SEGMENT_SIZE, (st.st_uid, st.st_size)
    assert not list(Path("/dev/shm").glob(f".tcpfix-*-{share_name}.v1.*")), "a temporary file was left behind"

    # Another user naming the same share gets a segment of its own (umask 0: still 0600).
    libcopy = world_dir / "libtcpfix.so"
    shutil.copyfile(lib, libcopy)
    libcopy.chmod(0o755)
    r = run_as_nobody([PYTHON, "-c", REFUSED_CLIENT, "7400", "2"],
                      {"LD_PRELOAD": str(libcopy), "TCPFIX_SHARE": share_name}, world_dir, umask=0)
    assert r.returncode == 0, show(r)
    theirs = segment_path(share_name, NOBODY)
    st = theirs.lstat()
    assert st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) == 0o600, (st.st_uid, oct(st.st_mode))

    listing = subprocess.run([str(CLI), "top", "--json"], capture_output=True, text=True, timeout=15)
    assert listing.returncode == 0, listing.stderr
    shares = {(s["share"], s["uid"]): s for s in json.loads(listing.stdout)["shares"]}
    mine = shares[(share_name, 0)]
    assert mine["readable"] and mine["connects"] == 3 and mine["failures"] == 3 and mine["processes"] == 0, mine
    assert shares[(share_name, NOBODY)]["connects"] == 2, shares[(share_name, NOBODY)]
    text = subprocess.run([str(CLI), "top"], capture_output=True, text=True, timeout=15).stdout
    assert share_name in text and str(path) in text, text


def spoil_symlink(path: Path, tmp: Path):
    victim = tmp / "victim"
    victim.write_bytes(b"precious\n")
    path.unlink()
    path.symlink_to(victim)
    return "is a symbolic link"


def spoil_owner(path: Path, tmp: Path):
    os.chown(path, NOBODY, NOBODY)
    return "belongs to uid 65534"


def spoil_mode(path: Path, tmp: Path):
    path.chmod(0o644)
    return "is open to other users (mode 0644"


def spoil_truncate(path: Path, tmp: Path):
    os.truncate(path, 100)
    return "is shorter than its header"


def spoil_truncate_tables(path: Path, tmp: Path):
    os.truncate(path, SEGMENT_SIZE - 4096)
    return "is not the size its header declares"


def spoil_checksum(path: Path, tmp: Path):
    with open(path, "r+b") as f:
        f.seek(80)  # inside the name
        b = f.read(1)
        f.seek(80)
        f.write(bytes([b[0] ^ 0x20]))
    return "fails its checksum"


def spoil_version(path: Path, tmp: Path):
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 2))
    return "has another layout version"


def spoil_magic(path: Path, tmp: Path):
    with open(path, "r+b") as f:
        f.write(b"NOTASHAR")
    return "is not a tcpfix share"


@pytest.mark.parametrize("spoil", [spoil_symlink, spoil_owner, spoil_mode, spoil_truncate, spoil_truncate_tables,
                                   spoil_checksum, spoil_version, spoil_magic], ids=lambda f: f.__name__[6:])
def test_untrusted_segment_warns_once_and_falls_back(netns, lib, share_name, tmp_path, spoil):
    """A segment made by a first process, then spoiled. The next processes
    say why once and pace on their own: a second process's connect is not
    delayed by the first one's failure (with a working share it would wait
    at least 200 ms), and the file is left exactly as it was."""
    env = tcpfix_env(lib, share=share_name, reconnect_backoff="400ms:1s")
    refused_connects(netns, env)
    path = segment_path(share_name)
    why = spoil(path, tmp_path)
    before = path.lstat()
    content = hashlib.sha256(path.read_bytes()).hexdigest() if not path.is_symlink() else None

    for _ in range(2):
        got, err = refused_connects(netns, env, n=2)
        lines = share_warnings(err, share_name)
        assert len(lines) == 1, err
        assert why in lines[0] and str(path) in lines[0] and "paces its connects on its own" in lines[0], lines
        # Per process: its first connect goes at once, its second waits its own backoff.
        assert got[0][0] < 0.1, got
        assert got[1][0] >= 0.19, got
    after = path.lstat()
    assert (after.st_mode, after.st_uid, after.st_size, after.st_mtime_ns) == \
        (before.st_mode, before.st_uid, before.st_size, before.st_mtime_ns)
    if content:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == content
    else:
        assert (tmp_path / "victim").read_bytes() == b"precious\n"
    r = subprocess.run([str(CLI), "top", share_name, "--once"], capture_output=True, text=True, timeout=15)
    assert r.returncode != 0 and str(path) in r.stderr, (r.returncode, r.stdout, r.stderr)


def test_a_working_share_delays_the_next_process(netns, lib, share_name):
    """The control arm of the test above: the same two processes with the
    share intact — the second one's first connect waits for the first one's
    backoff (400 ms times a jitter in [0.5, 1))."""
    env = tcpfix_env(lib, share=share_name, reconnect_backoff="400ms:1s")
    refused_connects(netns, env)
    got, err = refused_connects(netns, env)
    assert share_warnings(err, share_name) == []
    assert 0.1 <= got[0][0] <= 1.5, got


def test_full_table_warns_once_and_paces_the_rest_per_process(netns, lib, share_name):
    """1,100 destinations (closed ports) for a table of 1,024: the ones that
    do not fit are paced per process, with one warning."""
    client = r"""
import socket, sys
refused = 0
for port in range(1, 1101):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        refused += 1
    s.close()
print(refused)
"""
    r = netns.run([PYTHON, "-c", client], env=tcpfix_env(lib, share=share_name), timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "1100", show(r)
    lines = share_warnings(r.stderr, share_name)
    assert len(lines) == 1 and "table of 1024 destinations is full" in lines[0], r.stderr
    top = top_json(None, share_name)
    assert 900 <= top["destinations_used"] <= 1024 and top["table_full"] >= 1100 - top["destinations_used"], \
        {k: v for k, v in top.items() if k != "destinations"}
    assert sum(d["connects"] for d in top["destinations"]) == top["destinations_used"]


def test_set_user_id_process_ignores_the_share(world_dir, trusted_lib, stress_bin, share_name):
    """A set-user-ID-root client run by nobody (secure execution): tcpfix
    applies its policy (the peer sees the RST) but leaves the share alone —
    one line says so, and no segment appears for either user."""
    env = {"LD_PRELOAD": trusted_lib, "TCPFIX_CLOSE": "rst", "TCPFIX_SHARE": share_name}
    probe = world_dir / "probe-setuid"
    shutil.copyfile(stress_bin("tcpfix_secure_probe"), probe)
    os.chown(probe, 0, 0)
    probe.chmod(0o4755)
    r = run_as_nobody([probe], env, world_dir)
    got = probe_result(r)
    assert got["at_secure"] == 1 and got["tcpfix_loaded"] and got["peer_end"] == "ECONNRESET", got
    assert "TCPFIX_SHARE ignored" in r.stderr, show(r)
    for uid in (0, NOBODY):
        assert not segment_path(share_name, uid).exists(), f"a secure process made {segment_path(share_name, uid)}"


