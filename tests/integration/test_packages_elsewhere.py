"""The packages on the distributions they are for.

* The .deb, built here on Debian 12, installs with `dpkg -i` and works in
  Debian 11, 12 and 13 userlands (debootstrap roots from scripts/chroot.sh):
  the command runs, `tcpfix run --close rst` turns a client's close into an
  RST, the library preloaded by name refuses a misspelt variable before main,
  and `dpkg -r` removes every file. Its Depends: is the floor, libc6 (>= 2.17),
  and nothing else.
* The .rpm (CPack with Debian's rpm tools) requires nothing newer than
  glibc 2.17 (`rpm -qpR`), puts the library in /usr/lib64 as Red Hat's
  layout wants, and, unpacked into the Debian 11 userland (the oldest glibc
  here), `tcpfix run` finds the library there and it works.

Each userland is used through an overlay (a private mount namespace, the
cached root as the lower layer), so installing never changes the cache.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BASE_ENV, BUILD
from test_package import deb, need, need_tool, run  # noqa: F401  (deb is a fixture)
from userland import build_root

FLOOR = (2, 17)

# A client in the userland's python3: connects to a listener of its own,
# writes, closes (the active close: TIME_WAIT without tcpfix).
CLIENT = ("import socket; l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(); "
          "c = socket.create_connection(l.getsockname()); a, _ = l.accept(); "
          "c.sendall(b'QUIT'); a.recv(4); c.close(); print('client done')")


def in_overlay(root: Path, work: Path, script: str, files: dict[str, Path],
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `script` (sh) chrooted into an overlay of `root`, after copying
    `files` ({path inside: host file}) into it. Nothing is written to root."""
    upper, scratch, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, scratch, merged):
        d.mkdir(parents=True)
    for inside, host in files.items():
        dest = upper / inside.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host, dest)
    outer = (f'mount -t overlay overlay -o lowerdir={root},upperdir={upper},workdir={scratch} '
             f'{merged} && mount -t proc proc {merged}/proc && '
             f'exec chroot {merged} /usr/bin/env -i PATH={BASE_ENV["PATH"]} LANG=C.UTF-8 '
             f'/bin/sh -euc "$1"')
    return subprocess.run(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", outer,
                           "sh", script], capture_output=True, text=True, timeout=timeout)


def glibc_versions(requirements: str) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)", requirements)]


def test_deb_depends_on_the_floor_only(deb):  # noqa: F811
    depends = run(["dpkg-deb", "-f", deb, "Depends"]).stdout.strip()
    assert depends == "libc6 (>= 2.17)", depends


@pytest.mark.parametrize("suite", ["bullseye", "bookworm", "trixie"])
def test_deb_installs_and_works(suite, deb, tmp_path):  # noqa: F811
    root = build_root(suite)
    script = f"""
dpkg -i /tmp/tcpfix.deb >/dev/null
dpkg-query -W -f='installed ${{Version}}\\n' tcpfix
tcpfix --version
ldd --version | head -n1
tcpfix run --close rst --log debug -- python3 -c "{CLIENT}" 2>&1
set +e
LD_PRELOAD=libtcpfix.so TCPFIX_CLOSED=rst /bin/true 2>&1
echo "misspelt: exit $?"
set -e
dpkg -r tcpfix >/dev/null
for f in /usr/bin/tcpfix /usr/lib/x86_64-linux-gnu/libtcpfix.so /usr/share/man/man1/tcpfix.1; do
  [ -e "$f" ] && echo "left behind: $f"
done
echo removed
"""
    r = in_overlay(root, tmp_path, script, {"/tmp/tcpfix.deb": deb})
    out = r.stdout
    assert r.returncode == 0, f"exit {r.returncode}\n{out}\n{r.stderr}"
    assert re.search(r"^installed \d+\.\d+\.\d+$", out, re.M), out
    assert re.search(r"^tcpfix \d+\.\d+\.\d+$", out, re.M), out
    assert "client done" in out, out
    assert re.search(r"tcpfix\[\d+\] debug: close fd \d+ to 127\.0\.0\.1:\d+: RST", out), out
    assert "did you mean TCPFIX_CLOSE?" in out and "misspelt: exit 2" in out, out
    assert "left behind" not in out and out.rstrip().endswith("removed"), out


@pytest.fixture(scope="module")
def rpm(tmp_path_factory) -> Path:
    need(BUILD / "CPackConfig.cmake", "CPackConfig.cmake (configure with the top CMakeLists.txt)")
    need_tool("rpmbuild", "rpm")
    out = tmp_path_factory.mktemp("rpm")
    run(["cpack", "-G", "RPM", "--config", BUILD / "CPackConfig.cmake", "-B", out], cwd=BUILD,
        timeout=600)
    rpms = list(out.glob("tcpfix-*.rpm"))
    assert len(rpms) == 1, f"cpack made {rpms}"
    return rpms[0]


def test_rpm_requires_nothing_above_the_floor(rpm):
    requires = run(["rpm", "-qpR", rpm]).stdout
    versions = glibc_versions(requires)
    assert versions, requires
    above = [v for v in versions if v > FLOOR]
    assert above == [], f"requires glibc above 2.17: {above}\n{requires}"
    assert not re.search(r"libstdc\+\+|libgcc_s|GLIBCXX|CXXABI", requires), requires
    libs = set(re.findall(r"^(lib[\w.+-]+\.so[.\d]*)", requires, re.M))
    assert libs <= {"libc.so.6", "libdl.so.2", "libpthread.so.0", "libm.so.6"}, libs
    files = run(["rpm", "-qpl", rpm]).stdout.split()
    assert "/usr/lib64/libtcpfix.so" in files and "/usr/bin/tcpfix" in files, files


def test_rpm_layout_works_on_the_oldest_glibc_here(rpm, tmp_path):
    need_tool("rpm2cpio", "rpm2cpio")
    need_tool("cpio", "cpio")
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(f"rpm2cpio {rpm} | cpio -idm --quiet", shell=True, cwd=unpacked, check=True,
                   timeout=120)
    files = {f"/{p.relative_to(unpacked)}": p for p in unpacked.rglob("*")
             if p.is_file() and not p.is_symlink()}
    assert "/usr/lib64/libtcpfix.so" in files, sorted(files)
    script = f"""
ldd --version | head -n1
tcpfix run --close rst --log debug -- python3 -c "{CLIENT}" 2>&1
"""
    r = in_overlay(build_root("bullseye"), tmp_path / "overlay", script, files)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "GLIBC 2.31" in r.stdout, r.stdout
    assert "client done" in r.stdout, r.stdout
    assert re.search(r"debug: close fd \d+ to 127\.0\.0\.1:\d+: RST", r.stdout), r.stdout
