"""Other Debian userlands (other glibc versions) for the portability tests.

`userland(suite)` gives a cached Debian root built by scripts/chroot.sh
(debootstrap --variant=minbase from Debian's registry plus the suite's
packages: python3, curl, gcc; from bullseye also sysbench with its own
libmariadb3 and OpenJDK 11), with a scratch directory of this test session's
under its /tmp holding:

  * libtcpfix.so — the library built here, on Debian 12, copied as is;
  * the tests' small C clients (tests/programs/*.c), compiled by *that*
    userland's gcc against *its* glibc, as a user's programs there are.

`Userland.argv(ns, argv, env)` runs argv inside the test's network namespace,
chrooted into that userland, with /proc mounted (in the namespace's private
mount namespace, gone when the command ends) and a clean environment plus
`env`; paths in argv and env are the userland's. The scratch directory is
removed at the end of the session; the cached root itself is never written
but for it.

Nothing here skips: a root that cannot be built, a program that does not
compile there, raise, and the test fails.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from conftest import BASE_ENV, CLI, HERE, LIB, REPO

CHROOT_SCRIPT = REPO / "scripts" / "chroot.sh"
STARTPROBE = LIB.parent / "tests" / "floor" / "startprobe"
PROGRAM_SOURCES = REPO / "tests" / "programs"

# Which C clients each userland builds for itself.
C_CLIENTS = ("port_probe", "rst_writer", "timed_client", "leak_client", "fd_exerciser")

_RUN_CHROOTED = ('r=$1; shift; mount -t proc proc "$r/proc" || exit 125; '
                 'exec chroot "$r" /usr/bin/env -i "$@"')


class UserlandError(RuntimeError):
    """The userland could not be prepared (not a failure of tcpfix itself)."""


@dataclass
class Userland:
    suite: str
    root: Path
    scratch: str  # inside the root: "/tmp/tcpfix-<hex>"
    glibc: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)

    # -- paths --
    def host_path(self, inside: str) -> Path:
        """The host's path of a path inside the userland."""
        return self.root / inside.lstrip("/")

    @property
    def lib(self) -> str:
        return f"{self.scratch}/libtcpfix.so"

    @property
    def cli(self) -> str:
        return f"{self.scratch}/tcpfix"

    def program(self, name: str) -> str:
        return f"{self.scratch}/bin/{name}"

    def env(self, **variables: str) -> dict[str, str]:
        """LD_PRELOAD (the userland's copy of the library) plus TCPFIX_* as in
        conftest.tcpfix_env."""
        env = {"LD_PRELOAD": self.lib}
        for name, value in variables.items():
            key = name if name.startswith("TCPFIX_") else "TCPFIX_" + name.upper()
            env[key] = str(value)
        return env

    # -- running --
    def argv(self, ns, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        name = ns if isinstance(ns, str) else ns.name
        pairs = [f"{k}={v}" for k, v in {**BASE_ENV, **(env or {})}.items()]
        return ["ip", "netns", "exec", name, "/bin/sh", "-c", _RUN_CHROOTED, "sh", str(self.root),
                *pairs, *map(str, argv)]

    def run(self, ns, argv: list[str], env: dict[str, str] | None = None, timeout: float = 60,
            **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(ns, argv, env), capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def popen(self, ns, argv: list[str], env: dict[str, str] | None = None,
              **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        p = subprocess.Popen(self.argv(ns, argv, env), **kwargs)
        if hasattr(ns, "procs"):
            ns.procs.append(p)  # the namespace's teardown ends it
        self.procs.append(p)
        return p

    def chroot(self, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        """argv in the userland, outside any test namespace (set-up only)."""
        return subprocess.run(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                               _RUN_CHROOTED, "sh", str(self.root),
                               *[f"{k}={v}" for k, v in BASE_ENV.items()], *argv],
                              capture_output=True, text=True, timeout=timeout)

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(self.host_path(self.scratch), ignore_errors=True)


def build_root(suite: str) -> Path:
    r = subprocess.run(["bash", str(CHROOT_SCRIPT), suite], capture_output=True, text=True,
                       timeout=1200)
    if r.returncode != 0:
        raise UserlandError(f"scripts/chroot.sh {suite} failed (exit {r.returncode}):\n"
                            f"{r.stderr[-3000:]}")
    root = Path(r.stdout.strip().splitlines()[-1])
    if not (root / ".tcpfix-ready").is_file():
        raise UserlandError(f"scripts/chroot.sh {suite} printed {root}, which is not a finished root")
    return root


def prepare(suite: str, clients: tuple[str, ...] = C_CLIENTS) -> Userland:
    """The userland of `suite` with this session's library and clients."""
    if not LIB.is_file():
        raise UserlandError(f"{LIB} not built")
    root = build_root(suite)
    u = Userland(suite=suite, root=root, scratch=f"/tmp/tcpfix-{secrets.token_hex(4)}")
    scratch = u.host_path(u.scratch)
    (scratch / "src").mkdir(parents=True)
    (scratch / "bin").mkdir()
    try:
        shutil.copy2(LIB, scratch / "libtcpfix.so")
        shutil.copy2(CLI, scratch / "tcpfix")  # finds the library beside itself
        shutil.copy2(STARTPROBE, scratch / "startprobe")
        shutil.copy2(HERE / "py_prober.py", scratch / "py_prober.py")
        shutil.copy2(PROGRAM_SOURCES / "progutil.h", scratch / "src" / "progutil.h")
        for name in clients:
            shutil.copy2(PROGRAM_SOURCES / f"{name}.c", scratch / "src" / f"{name}.c")
            r = u.chroot(["gcc", "-O2", "-Wall", "-o", u.program(name), f"{u.scratch}/src/{name}.c",
                          "-lpthread"])
            if r.returncode != 0:
                raise UserlandError(f"{suite}: gcc {name}.c failed:\n{r.stdout}{r.stderr}")
        r = u.chroot(["ldd", "--version"])
        m = re.search(r"(\d+\.\d+)\s*$", r.stdout.splitlines()[0] if r.stdout else "")
        if r.returncode != 0 or not m:
            raise UserlandError(f"{suite}: ldd --version said {r.stdout!r} {r.stderr!r}")
        u.glibc = m.group(1)
    except Exception:
        u.cleanup()
        raise
    return u

