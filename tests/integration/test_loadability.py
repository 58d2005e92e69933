"""Say it before it breaks: `tcpfix run` and `tcpfix doctor --binary` tell,
in one sentence, when a program cannot load the library — a musl program, a
glibc older than the library's symbol versions need — instead of letting
the loader abort the program (which it does, fatally: shown here too).

The old glibc is real where this machine has one (Debian 11's, 2.31, in its
userland, against a library that needs 2.36: tests/floor's canary), and
made up where it has not (a libc.so.6 that defines versions up to
GLIBC_2.12, CentOS 6's, beside a program whose loader path points there).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BASE_ENV, BUILD, CLI, LIB
from userland import build_root

CANARY = BUILD / "tests" / "floor" / "libtcpfix_floor_canary.so"
HELLO = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], env=dict(BASE_ENV), capture_output=True, text=True,
                          timeout=60, **kwargs)


def compile_c(out: Path, *flags: str, compiler: str = "gcc") -> Path:
    src = out.with_suffix(".c")
    src.write_text(HELLO)
    r = run([compiler, "-O1", "-o", out, src, *flags])
    assert r.returncode == 0, r.stderr
    return out


def one_sentence(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def musl_program(tmp_path_factory) -> Path:
    if shutil.which("musl-gcc") is None:
        pytest.fail("musl-gcc is required (apt-get install musl-tools)", pytrace=False)
    return compile_c(tmp_path_factory.mktemp("musl") / "hello", "-Wl,--dynamic-linker=/lib/ld-musl-x86_64.so.1",
                     compiler="musl-gcc")


def test_musl_program_loader_aborts_it(musl_program):
    """What a user gets without the check: musl's loader cannot load a glibc
    library and the program does not run."""
    assert run([musl_program]).stdout == "hello\n"
    r = subprocess.run([str(musl_program)], env={**BASE_ENV, "LD_PRELOAD": str(LIB)},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "hello" not in r.stdout, (r.returncode, r.stdout, r.stderr)


def test_run_refuses_musl_program(musl_program):
    r = run([CLI, "run", "--close", "rst", "--", musl_program])
    assert r.returncode == 126, (r.returncode, r.stderr)
    line = one_sentence(r.stderr)
    assert line.startswith(f"tcpfix: {musl_program} is a musl program") and "not starting it" in line, line
    assert "hello" not in r.stdout


def test_doctor_names_musl_program(musl_program):
    r = run([CLI, "doctor", "--binary", musl_program])
    assert "[critical]" in r.stdout and "is a musl program" in r.stdout, r.stdout


@pytest.fixture(scope="module")
def centos6_like(tmp_path_factory) -> Path:
    """A program whose loader sits beside a libc.so.6 defining glibc versions
    only up to GLIBC_2.12 (not runnable: doctor and run only read it)."""
    d = tmp_path_factory.mktemp("centos6")
    nodes = ["2.2.5", "2.3", "2.3.2", "2.3.4", "2.4", "2.5", "2.6", "2.7", "2.8", "2.9", "2.10",
             "2.11", "2.12"]
    script, previous = [], None
    for i, v in enumerate(nodes):
        script.append(f"GLIBC_{v} {{ global: tcpfix_stub_{i}; }}{' GLIBC_' + previous if previous else ''};")
        previous = v
    (d / "libc.map").write_text("\n".join(script) + "\n")
    (d / "stub.c").write_text("\n".join(f"void tcpfix_stub_{i}(void) {{}}" for i in range(len(nodes))))
    r = run(["gcc", "-shared", "-fPIC", "-nostdlib", "-o", d / "libc.so.6", d / "stub.c",
             f"-Wl,--version-script={d / 'libc.map'}", "-Wl,-soname,libc.so.6"])
    assert r.returncode == 0, r.stderr
    shutil.copy2("/lib64/ld-linux-x86-64.so.2", d / "ld-linux-x86-64.so.2")
    return compile_c(d / "legacy", f"-Wl,--dynamic-linker={d / 'ld-linux-x86-64.so.2'}")


def test_run_refuses_program_with_older_glibc(centos6_like):
    r = run([CLI, "run", "--", centos6_like])
    assert r.returncode == 126, (r.returncode, r.stderr)
    line = one_sentence(r.stderr)
    assert f"{centos6_like} uses an older glibc than libtcpfix.so needs" in line, line
    assert "up to GLIBC_2.12, the library asks for GLIBC_2.17" in line, line
    r = run([CLI, "doctor", "--binary", centos6_like])
    assert "[critical]" in r.stdout and "uses an older glibc" in r.stdout, r.stdout


def test_real_older_glibc_against_a_newer_library(tmp_path):
    """Debian 11's glibc (2.31) with a library that needs 2.36 (the floor
    audit's canary): refused in one sentence; the loader itself would abort.
    With the real libtcpfix.so (needs 2.17) doctor finds nothing to say."""
    root = build_root("bullseye")
    program = compile_c(tmp_path / "hello",
                        f"-Wl,--dynamic-linker={root}/lib/x86_64-linux-gnu/ld-2.31.so")
    assert CANARY.is_file(), f"{CANARY} not built"
    r = run([CLI, "run", "--library", CANARY, "--", program])
    assert r.returncode == 126, (r.returncode, r.stderr)
    line = one_sentence(r.stderr)
    assert "uses an older glibc than libtcpfix_floor_canary.so needs" in line, line
    assert "up to GLIBC_2.30, the library asks for GLIBC_2.36" in line, line  # 2.31 added no symbol

    # The loader's own verdict, in that userland: fatal.
    copy = root / "tmp" / f"canary-{tmp_path.name}.so"
    shutil.copy2(CANARY, copy)
    try:
        r = subprocess.run(["chroot", str(root), "/usr/bin/env", "-i", f"LD_PRELOAD=/tmp/{copy.name}",
                            "/bin/true"], capture_output=True, text=True, timeout=30)
    finally:
        copy.unlink()
    assert r.returncode != 0 and "GLIBC_2.3" in r.stderr and "not found" in r.stderr, (r.returncode, r.stderr)

    r = run([CLI, "doctor", "--binary", program])
    assert "older glibc" not in r.stdout and "musl" not in r.stdout, r.stdout
