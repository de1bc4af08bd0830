"""Transport plugins as real distributions: a one-module project with an ``rtcxfer.transports``
entry point, installed by pip into a directory of its own, exactly as a third party's would be."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SETUP_CFG = """
[metadata]
name = {dist}
version = {version}

[options]
py_modules = {module}

[options.entry_points]
rtcxfer.transports =
    {entry} = {module}
"""


def make_distribution(root: Path, dist: str, version: str, module: str, entry: str, source: str) -> Path:
    """The project of distribution ``dist`` in ``root/dist``: ``module.py`` holding ``source``,
    registered as the plugin ``entry``."""
    project = root / dist
    project.mkdir()
    (project / "setup.cfg").write_text(SETUP_CFG.format(dist=dist, version=version, module=module, entry=entry))
    (project / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    (project / f"{module}.py").write_text(textwrap.dedent(source))
    return project


def install(target: Path, *projects: Path) -> Path:
    """``pip install`` the ``projects`` (without dependencies) into ``target``, a directory to
    put on ``PYTHONPATH``; returns ``target``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), *map(str, projects)],
        check=True,
        capture_output=True,
    )
    return target
