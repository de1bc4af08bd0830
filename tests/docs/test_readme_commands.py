"""The README's Quick start is what a newcomer runs, and it works: two commands, the demo and the
tests, each making its virtual environment (a stock Debian or Ubuntu Python refuses system-wide
installs, PEP 668); ``.ci/run`` runs the very same test command; the quick and the full test
commands are named with their times (issue 24, points 1 and 11).

The slow test runs the Quick start in a copy of this tree with a Python that refuses system-wide
installs: the machine's own where it has one (Debian's ``/usr/bin/python3``), else a copy of this
interpreter with an ``EXTERNALLY-MANAGED`` marker in its standard library.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"
#: A hang guard for installing everything the tests need (several minutes when pip downloads).
INSTALL_GUARD = 1200.0

FENCE = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)


def quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Quick start\n")
    return text[start : text.index("\n## ", start + 1)]


MAKE_VENV = "python3 -m venv .venv && "


def commands() -> dict[str, str]:
    """The Quick start's shell commands by role: demo, tests, quick check."""
    blocks = [block.strip() for block in FENCE.findall(quick_start())]
    assert len(blocks) == 3, blocks
    assert all("\n" not in block for block in blocks), "each step is one command line"
    return dict(zip(("demo", "tests", "quick"), blocks))


def test_the_quick_start_is_two_commands_each_making_its_virtual_environment():
    steps = commands()
    assert steps["demo"] == MAKE_VENV + ".venv/bin/python -m pip install . && .venv/bin/rtcxfer demo"
    assert steps["tests"].startswith(
        MAKE_VENV + '.venv/bin/python -m pip install -e ".[test,fast]" -e "plugins/rtcxfer-s3[test]" && '
    )
    assert steps["tests"].endswith(" && .venv/bin/python -m pytest tests plugins/rtcxfer-s3/tests")
    assert steps["quick"] == '.venv/bin/python -m pytest -m "not slow" tests plugins/rtcxfer-s3/tests'
    section = " ".join(quick_start().split())
    assert "externally-managed-environment" in section and "python3-venv" in section


def test_ci_runs_the_readmes_test_command_verbatim():
    steps = commands()
    lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    assert steps["tests"] in lines
    installs = [line for line in lines if "pip install" in line and not line.startswith("#")]
    assert installs == [steps["tests"]], "CI installs nothing the README does not"
    assert os.access(CI_RUN, os.X_OK)


def test_the_readme_names_the_quick_and_the_full_test_command_with_their_times():
    section = " ".join(quick_start().split())
    assert re.search(r"Installing the test extras takes about \d+ s", section), section
    assert re.search(r"the full run about \d+ minutes on two cores", section), section
    assert re.search(r"The quick check [^`]* \(about \d+ s on two cores", section), section


# --- the Quick start on a Python that refuses system-wide installs ---------------------------------


def probe(python: Path) -> bool:
    """Whether ``python`` is not a virtual environment, refuses system-wide installs, and makes
    virtual environments with pip (ensurepip), on Python 3.10 or newer."""
    check = (
        "import ensurepip, os, sys, sysconfig; "
        "managed = os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')); "
        "sys.exit(0 if managed and sys.prefix == sys.base_prefix and sys.version_info >= (3, 10) else 1)"
    )
    try:
        return subprocess.run([str(python), "-c", check], capture_output=True, timeout=60).returncode == 0
    except OSError:
        return False


def emulated_managed_python(prefix: Path) -> Path | None:
    """A copy of this interpreter (its binary, shared library and standard library, no
    site-packages) that refuses system-wide installs as Debian's does: an ``EXTERNALLY-MANAGED``
    file in its standard library."""
    base = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    binary = base / "bin" / version
    stdlib = Path(sysconfig.get_path("stdlib"))
    if not binary.is_file() or stdlib != base / "lib" / version:
        return None
    (prefix / "bin").mkdir(parents=True)
    shutil.copy2(binary, prefix / "bin" / version)
    (prefix / "bin" / "python3").symlink_to(version)
    shutil.copytree(stdlib, prefix / "lib" / version, symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages", "test", "__pycache__"))
    for library in (base / "lib").glob(f"lib{version}*.so*"):
        shutil.copy2(library, prefix / "lib" / library.name)
    (prefix / "lib" / version / "site-packages").mkdir()
    copy = prefix / "bin" / "python3"
    # Its own pip, as a system's Python has, installed before the marker would refuse it.
    if subprocess.run([str(copy), "-m", "ensurepip", "--default-pip"], capture_output=True, timeout=300).returncode:
        return None
    (prefix / "lib" / version / "EXTERNALLY-MANAGED").write_text(
        "[externally-managed]\nError=This Python is managed by the system (a test's stand-in for Debian's).\n"
    )
    return copy


def managed_python(scratch: Path) -> Path | None:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if probe(Path(candidate)):
            return Path(candidate)
    emulated = emulated_managed_python(scratch / "managed-python")
    return emulated if emulated is not None and probe(emulated) else None


def fresh_copy(destination: Path) -> Path:
    """This tree as a fresh clone has it: no virtual environment, caches or build output."""
    ignored = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".hypothesis", ".pytest_cache", ".ruff_cache",
        ".import_linter_cache", ".benchmarks", "build", "dist", ".tox",
    )
    shutil.copytree(REPO, destination, ignore=ignored, symlinks=True)
    return destination


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell commands")
def test_the_quick_start_works_on_a_python_that_refuses_system_wide_installs(tmp_path):
    python = managed_python(tmp_path)
    if python is None:
        pytest.skip("no Python here that refuses system-wide installs, and this one cannot be copied to make one")
    clone = fresh_copy(tmp_path / "rtcxfer")
    steps = commands()
    make_venv, install_extras, run_tests = steps["tests"].split(" && ")
    script = "\n".join([
        "set -e",
        # The system's Python refuses: what a newcomer meets without the set-up line. (Asked for a
        # package that does not exist, so that nothing is installed even if it did not refuse.)
        "if python3 -m pip install --no-index --no-deps rtcxfer-no-such-package >refused.log 2>&1; then exit 99; fi",
        "grep -q externally-managed-environment refused.log",
        "echo '== demo'", steps["demo"],
        "test -x .venv/bin/rtcxfer",
        "echo '== test extras'", f"{make_venv} && {install_extras}",
        # The test command itself, but collecting only: running the whole suite here would run this test again.
        "echo '== tests'", f"{run_tests} --collect-only -q",
    ])
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RTCXFER_", "PYTHON", "VIRTUAL_ENV", "PIP_BREAK", "PIP_USER", "PIP_REQUIRE"))
    }
    env["PATH"] = os.pathsep.join([str(python.parent), "/usr/bin", "/bin"])
    run = subprocess.run(
        ["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=INSTALL_GUARD,
        stdin=subprocess.DEVNULL,
    )
    output = f"exit {run.returncode}\n--- stdout\n{run.stdout[-6000:]}\n--- stderr\n{run.stderr[-6000:]}"
    assert run.returncode == 0, output
    demo = run.stdout[run.stdout.index("== demo") : run.stdout.index("== test extras")]
    for transport in ("shared-fs", "direct", "rtc-chunked"):
        assert f"package via {transport}, results via {transport}" in demo, output
    assert re.search(r"\d+ tests collected", run.stdout[run.stdout.index("== tests") :]), output
