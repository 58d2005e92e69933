#!/usr/bin/python3
"""check_floor.py [--floor 2.17] FILE... — fails naming everything in FILE's
dynamic linking that an older glibc host could not satisfy.

libtcpfix.so and the tcpfix command must load on every glibc from the floor
(2.17) on, whatever machine built them (README "Runs on every glibc from
2.17"). The loader refuses, fatally, an object that needs a symbol version
its libc does not define, so for each FILE this reads the dynamic symbol
table, the version needs and the NEEDED entries (readelf from binutils) and
reports:
  - every symbol bound to a GLIBC_x.y version above the floor, and every
    version need above it (weak references included: the loader checks the
    whole need list);
  - any GLIBCXX_, CXXABI_ or GCC_ version (a C++ runtime or libgcc_s the
    host may not have, or has in an older version);
  - any shared library besides libc, libdl, libpthread, libm and the loader.
A statically linked FILE has none of these and passes.

Exit status 0 when every FILE is clean, 1 (with one line per finding) if not,
2 on a usage or tool error. With --expect NAME (repeatable) it checks itself
instead: exit 0 only if there are findings and each NAME is among them (the
ctest `floor.audit_catches` runs it so on a library built to fail).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

ALLOWED_NEEDED = {
    "libc.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "libm.so.6",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}
GLIBC_VERSION = re.compile(r"^GLIBC_(\d+(?:\.\d+)+)$")
RUNTIME_VERSION = re.compile(r"^(GLIBCXX|CXXABI|GCC)_[\d.]+$")


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def readelf(*args: str) -> str:
    out = subprocess.run(["readelf", "-W", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"readelf {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def version_verdict(version: str, floor: tuple[int, ...]) -> str | None:
    """Why VERSION is refused, or None."""
    m = GLIBC_VERSION.match(version)
    if m:
        if version_tuple(m.group(1)) > floor:
            return "above the floor"
        return None
    if RUNTIME_VERSION.match(version):
        return "a C++ runtime/libgcc version the host may lack"
    return None


def findings(path: str, floor: tuple[int, ...]) -> list[str]:
    found: list[str] = []
    for line in readelf("-d", path).splitlines():
        m = re.search(r"\(NEEDED\)\s+Shared library: \[(.+)\]", line)
        if m and m.group(1) not in ALLOWED_NEEDED:
            found.append(f"{path}: needs shared library {m.group(1)}")
    for line in readelf("--dyn-syms", path).splitlines():
        # "   12: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND dlsym@GLIBC_2.34 (3)"
        fields = line.split()
        if len(fields) < 8 or not fields[0].endswith(":"):
            continue
        name = fields[7]
        if "@" not in name:
            continue
        symbol, _, version = name.partition("@")
        version = version.lstrip("@")
        why = version_verdict(version, floor)
        if why:
            kind = "uses" if fields[6] == "UND" else "defines"
            found.append(f"{path}: {kind} {symbol}@{version} ({why})")
    current_file = None
    for line in readelf("-V", path).splitlines():
        m = re.search(r"Version: \d+\s+File: (\S+)", line)
        if m:
            current_file = m.group(1)
            continue
        m = re.search(r"Name: (\S+)\s+Flags", line)
        if m and current_file:
            why = version_verdict(m.group(1), floor)
            if why:
                found.append(f"{path}: needs version {m.group(1)} of {current_file} ({why})")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floor", default="2.17", help="oldest glibc to load on (2.17)")
    parser.add_argument("--expect", action="append", default=[], metavar="NAME",
                        help="self-test: these names must be reported")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    if shutil.which("readelf") is None:
        print("check_floor: readelf not found (binutils)", file=sys.stderr)
        return 2
    floor = version_tuple(args.floor)
    problems: list[str] = []
    try:
        for path in args.files:
            problems += findings(path, floor)
    except (RuntimeError, OSError) as e:
        print(f"check_floor: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(p, flush=True)
    if args.expect:
        missed = [n for n in args.expect
                  if not any(f" {n}@" in p or p.endswith(f" {n}") for p in problems)]
        if missed or not problems:
            print(f"check_floor: self-test: not reported: {', '.join(missed) or '(no findings)'}",
                  file=sys.stderr)
            return 1
        print(f"check_floor: self-test: reported {', '.join(args.expect)} as it should")
        return 0
    if problems:
        print(f"check_floor: {len(problems)} finding(s) above glibc {args.floor}", file=sys.stderr)
        return 1
    print(f"check_floor: {', '.join(args.files)}: nothing above glibc {args.floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
