"""The package: what `cmake --install` lays out, the Debian package CPack
builds (installed on this machine, used from PATH, removed without a trace),
the manuals and the bash completion.

Needs root (dpkg -i), the build tree configured by the top CMakeLists.txt
(CPackConfig.cmake, man/, completions/), and dpkg-dev (dpkg-shlibdeps,
dpkg-architecture), man-db and groff-base. The package test refuses to run
when a tcpfix package is already installed rather than touch it; whatever it
installs it removes, pass or fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BASE_ENV, BUILD, CLI, REPO

MAN_DIR = BUILD / "man"
COMPLETION = BUILD / "completions" / "tcpfix"
# PATH without /usr/local: a `cmake --install` there must not shadow the package.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120,
        check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """argv with a clean environment (nothing of the caller's LD_PRELOAD or
    TCPFIX_*) plus env; fails the test with both outputs if check and it fails."""
    p = subprocess.run([str(a) for a in argv], env={**BASE_ENV, **(env or {})},
                       capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {p.returncode}\n"
                    f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}", pytrace=False)
    return p


def need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(f"{what} not found at {path}: build first (cmake --build {BUILD})",
                    pytrace=False)
    return path


def need_tool(name: str, package: str) -> str:
    found = shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        pytest.fail(f"{name} is required (apt-get install {package})", pytrace=False)
    return found


@pytest.fixture(scope="module")
def multiarch() -> str:
    need_tool("dpkg-architecture", "dpkg-dev")
    return run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"]).stdout.strip()


def installed_version(package: str) -> str | None:
    p = run(["dpkg-query", "-W", "-f=${Status} ${Version}", package], check=False)
    if p.returncode != 0 or not p.stdout.startswith("install ok installed"):
        return None
    return p.stdout.split()[-1]


def run_options_from_help() -> list[str]:
    """The long options `tcpfix run --help` lists (CLI11's option lines)."""
    text = run([need(CLI, "the tcpfix CLI"), "run", "--help"]).stdout
    opts = re.findall(r"^\s+(?:-\w,)?(--[a-z][a-z0-9-]*)", text, re.M)
    assert "--close" in opts and "--stats" in opts, f"unexpected run --help:\n{text}"
    return opts


def variables_from_help() -> set[str]:
    """Every TCPFIX_* variable, as `tcpfix run --help` (made from the table) names them."""
    text = run([need(CLI, "the tcpfix CLI"), "run", "--help"]).stdout
    names = set(re.findall(r"sets (TCPFIX_[A-Z_]+)", text))
    assert len(names) >= 15, f"too few variables in run --help: {sorted(names)}"
    return names


def rendered(page: Path, locale: str = "C.UTF-8") -> subprocess.CompletedProcess:
    """`man -l page` at 80 columns with groff's warnings on, as text."""
    need_tool("man", "man-db")
    need_tool("groff", "groff-base")
    return run(["man", "--warnings", "-l", page],
               env={"MANWIDTH": "80", "LANG": locale, "MANPAGER": "cat", "PAGER": "cat"}, check=False)


# ---- the manuals -----------------------------------------------------------------


@pytest.mark.parametrize("section", ["1", "7"])
@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_manual_renders_without_warnings(section: str, locale: str):
    page = need(MAN_DIR / f"tcpfix.{section}", f"man page tcpfix.{section}")
    p = rendered(page, locale)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", f"man --warnings -l {page} ({locale}):\n{p.stderr}"
    assert f"TCPFIX({section})" in p.stdout
    strict = run(["groff", "-man", "-ww", "-z", page], check=False)
    assert strict.returncode == 0 and strict.stderr == "", strict.stderr


def test_manual_7_lists_every_variable_with_its_value_and_example():
    page = need(MAN_DIR / "tcpfix.7", "man page tcpfix.7")
    roff = page.read_text()
    text = re.sub(r".\x08", "", rendered(page).stdout)
    for name in sorted(variables_from_help()):
        # One entry per variable in the generated list: .TP, then the name in bold.
        assert re.search(rf"^\.TP\n\\fB{name}\\fR$", roff, re.M), f"{name} has no entry"
        block = text[text.index(f"\n       {name}\n"):]
        block = " ".join(block[:block.index("Example:") + 200].split())
        assert "Value:" in block, f"{name}: no Value line\n{block}"
        assert f"Example: {name}=" in block, f"{name}: no example\n{block}"
    for incident in ("000", "001", "002", "003"):
        assert re.search(rf"^       {incident} \S", text, re.M), f"incident {incident} missing"
    for section in ("DESCRIPTION", "VARIABLES", "STATS", "LIMITS", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M), f"no {section} section"
    assert "Prometheus" in text and ".prom" in text
    assert "KERNEL-FACTS" not in text  # a document the manual does not carry


def test_readme_and_table_name_the_same_variables():
    """The manual's descriptions come from README's table: a variable missing
    there would fall back to its one-line summary, one README has and the
    table lacks would be documented nowhere else."""
    readme = (REPO / "README.md").read_text()
    table = set(re.findall(r"^\| `(TCPFIX_[A-Z_]+)` \|", readme, re.M))
    assert table == variables_from_help()


def test_manual_1_lists_every_run_option_and_subcommand():
    page = need(MAN_DIR / "tcpfix.1", "man page tcpfix.1")
    text = re.sub(r".\x08", "", rendered(page).stdout)
    for opt in run_options_from_help():
        if opt == "--help":
            continue
        assert re.search(rf"^       {re.escape(opt)}\b", text, re.M), f"run option {opt} missing"
    for sub in subcommands_from_help():
        assert re.search(rf"^       {sub}\b", text, re.M), f"subcommand {sub} missing"


def subcommands_from_help() -> list[str]:
    text = run([need(CLI, "the tcpfix CLI"), "--help"]).stdout
    block = text.split("Subcommands:", 1)[1]
    subs = re.findall(r"^  ([a-z]+)\s", block, re.M)
    assert "run" in subs, text
    return subs


# ---- the bash completion ----------------------------------------------------------


def complete(words: list[str], completion: Path = COMPLETION, cli: Path = CLI) -> list[str]:
    """What _tcpfix offers when the cursor is at the end of the last word."""
    need(completion, "the generated bash completion")
    words = [str(cli)] + words[1:] if words and words[0] == "tcpfix" else words
    quoted = " ".join(f"'{w}'" for w in words)
    script = (f"source '{completion}'\n"
              f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
              f"COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n"
              "_tcpfix\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    p = run(["bash", "--norc", "--noprofile", "-c", script], env={"PATH": SYSTEM_PATH},
            check=False)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    return [l for l in p.stdout.splitlines() if l]


def test_completion_offers_every_subcommand():
    assert sorted(complete(["tcpfix", ""])) == sorted(subcommands_from_help())
    assert complete(["tcpfix", "pr"]) == ["probe"]
    assert sorted(complete(["tcpfix", "--"])) == ["--help", "--version"]


def test_completion_of_run_options_comes_from_the_table():
    offered = set(complete(["tcpfix", "run", "--"]))
    assert set(run_options_from_help()) <= offered, offered
    assert sorted(complete(["tcpfix", "run", "--con"])) == [
        "--connect-rate", "--connect-retries", "--connect-timeout"]
    assert sorted(complete(["tcpfix", "run", "--close", ""])) == ["keep", "rst", "rst-always"]
    assert complete(["tcpfix", "run", "--log", "d"]) == ["debug"]
    assert complete(["tcpfix", "run", "--log", "=", "in"]) == ["info"]
    assert "/tmp" in complete(["tcpfix", "run", "--stats", "/tm"])
    # A value is not taken for the command; after it, options again.
    assert "--tag" in complete(["tcpfix", "run", "--connect-timeout", "30ms", "--t"])


def test_completion_hands_over_to_the_command():
    assert "python3" in complete(["tcpfix", "run", "--close", "rst", "--", "python"])
    assert "python3" in complete(["tcpfix", "run", "--tag", "a", "python"])
    # The command's own arguments are not tcpfix's options.
    assert "--close" not in complete(["tcpfix", "run", "--", "true", "--cl"])


def test_completion_of_attach_takes_runs_policy_options():
    offered = set(complete(["tcpfix", "attach", "--"]))
    assert {"--cgroup", "--unit", "--json", "--close", "--reap-close-wait"} <= offered, offered
    assert "--library" not in offered
    assert sorted(complete(["tcpfix", "attach", "--close", ""])) == ["keep", "rst", "rst-always"]
    assert "/sys" in complete(["tcpfix", "attach", "--cgroup", "/sy"])
    assert "python3" in complete(["tcpfix", "attach", "--close", "rst", "--", "python"])


def test_completion_of_other_subcommands_follows_their_help():
    probe = set(complete(["tcpfix", "probe", "--"]))
    assert {"--timeout", "--count", "--interval", "--json"} <= probe, probe
    assert complete(["tcpfix", "churn", "--close", ""]) == ["graceful", "rst"]


# ---- cmake --install ------------------------------------------------------------------


def test_cmake_install_layout(tmp_path: Path, multiarch: str):
    prefix = tmp_path / "prefix"
    run(["cmake", "--install", BUILD, "--prefix", prefix])
    lib = prefix / "lib" / multiarch / "libtcpfix.so"
    expect = [
        lib,
        prefix / "bin" / "tcpfix",
        prefix / "share" / "man" / "man1" / "tcpfix.1",
        prefix / "share" / "man" / "man7" / "tcpfix.7",
        prefix / "share" / "bash-completion" / "completions" / "tcpfix",
    ]
    for path in expect:
        assert path.is_file(), f"{path} not installed; got:\n" + "\n".join(
            str(p.relative_to(prefix)) for p in sorted(prefix.rglob("*")))
    assert os.access(prefix / "bin" / "tcpfix", os.X_OK)
    assert lib.stat().st_mode & 0o777 == 0o644
    # The installed command finds the installed library by itself.
    p = run([prefix / "bin" / "tcpfix", "run", "--close", "rst", "--", "env"])
    assert f"LD_PRELOAD={lib.resolve()}" in p.stdout.splitlines(), p.stdout


# ---- the Debian package ------------------------------------------------------------------


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    need(BUILD / "CPackConfig.cmake", "CPackConfig.cmake (configure with the top CMakeLists.txt)")
    need_tool("dpkg-shlibdeps", "dpkg-dev")
    out = tmp_path_factory.mktemp("deb")
    run(["cpack", "-G", "DEB", "--config", BUILD / "CPackConfig.cmake", "-B", out],
        cwd=BUILD, timeout=600)
    debs = list(out.glob("tcpfix_*.deb"))
    assert len(debs) == 1, f"cpack made {debs}"
    return debs[0]


def deb_files(deb: Path) -> list[str]:
    """The regular files the package holds, as absolute paths."""
    listing = run(["dpkg-deb", "-c", deb]).stdout
    return [line.split()[-1].lstrip(".") for line in listing.splitlines()
            if line.startswith("-")]


def test_deb_control_fields(deb: Path, multiarch: str):
    fields = run(["dpkg-deb", "-f", deb, "Package", "Maintainer", "Depends", "Section"]).stdout
    assert "Package: tcpfix" in fields
    assert re.search(r"^Maintainer: .+ <.+@.+>$", fields, re.M), fields
    # The audited glibc floor (test_packages_elsewhere checks the exact
    # field, and that it installs on Debian 11).
    assert re.search(r"^Depends: .*libc6 \(>= [0-9.]+\)", fields, re.M), fields
    files = deb_files(deb)
    assert sorted(files) == sorted([
        "/usr/bin/tcpfix",
        f"/usr/lib/{multiarch}/libtcpfix.so",
        "/usr/share/bash-completion/completions/tcpfix",
        "/usr/share/man/man1/tcpfix.1",
        "/usr/share/man/man7/tcpfix.7",
    ]), files


def test_deb_installs_runs_and_removes_cleanly(deb: Path, multiarch: str):
    before = installed_version("tcpfix")
    if before is not None:
        pytest.fail(f"a tcpfix package ({before}) is already installed; this test installs "
                    f"and removes its own: run `dpkg -r tcpfix` first", pytrace=False)
    files = deb_files(deb)
    lib = f"/usr/lib/{multiarch}/libtcpfix.so"
    env = {"PATH": SYSTEM_PATH}
    try:
        run(["dpkg", "-i", deb], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
        assert installed_version("tcpfix") is not None
        assert shutil.which("tcpfix", path=SYSTEM_PATH) == "/usr/bin/tcpfix"

        version = run(["tcpfix", "--version"], env=env).stdout.strip()
        assert re.fullmatch(r"tcpfix [0-9]+\.[0-9]+\.[0-9]+", version), version
        assert version.split()[1] == run(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()

        p = run(["tcpfix", "run", "--", "true"], env=env)
        assert p.stderr == "", p.stderr
        p = run(["tcpfix", "run", "--close", "rst", "--", "env"], env=env)
        assert f"LD_PRELOAD={lib}" in p.stdout.splitlines(), p.stdout

        # The library is in the linker's path: preloaded by name, it runs (and
        # refuses a misspelt variable before main, as it must).
        p = run(["true"], env={**env, "LD_PRELOAD": "libtcpfix.so", "TCPFIX_CLOSED": "rst"},
                check=False)
        assert p.returncode == 2, (p.returncode, p.stderr)
        assert "did you mean TCPFIX_CLOSE?" in p.stderr, p.stderr

        assert run(["man", "-w", "tcpfix"], env=env).stdout.strip() == "/usr/share/man/man1/tcpfix.1"
        assert run(["man", "-w", "7", "tcpfix"], env=env).stdout.strip() == \
            "/usr/share/man/man7/tcpfix.7"
        assert sorted(complete(["tcpfix", "run", "--con"],
                               completion=Path("/usr/share/bash-completion/completions/tcpfix"),
                               cli=Path("/usr/bin/tcpfix"))) == [
            "--connect-rate", "--connect-retries", "--connect-timeout"]

        run(["dpkg", "-r", "tcpfix"], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
        assert installed_version("tcpfix") is None
        left = [f for f in files if os.path.lexists(f)]
        assert left == [], f"left behind by dpkg -r: {left}"
        assert shutil.which("tcpfix", path=SYSTEM_PATH) is None
    finally:
        if installed_version("tcpfix") is not None or run(
                ["dpkg-query", "-W", "tcpfix"], check=False).returncode == 0:
            run(["dpkg", "--purge", "tcpfix"], env={"DEBIAN_FRONTEND": "noninteractive"},
                check=False, timeout=300)
