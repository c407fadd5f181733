"""A minimal Python project shaped like trainer/ (src layout, dependencies read from requirements.txt), for tests
that build an sdist of it with tasks.packaging: tests/tasks/test_packaging.py and the emulator tests' `emujob`."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "{version}"
requires-python = ">=3.10"
dynamic = ["dependencies"]

[tool.setuptools.dynamic]
dependencies = {{ file = ["requirements.txt"] }}

[tool.setuptools.packages.find]
where = ["src"]
"""


def write_tiny_project(root: Path, name: str, version: str, package: str, modules: Mapping[str, str],
                       requirements: str = "") -> Path:
    """Write the project into `root`: `modules` maps file names in `src/<package>/` to their source."""
    (root / "src" / package).mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT.format(name=name, version=version))
    (root / "MANIFEST.in").write_text("include requirements.txt\n")
    (root / "requirements.txt").write_text(requirements)
    for filename, source in modules.items():
        (root / "src" / package / filename).write_text(source)
    return root
