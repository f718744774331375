"""With PYFASTOPT_EXPECT_INSTALLED=1 (CI's wheel and sdist runs), the package under test must be
the installed one: in site-packages, with its compiled core beside it, and no source tree of
pyfastopt anywhere on sys.path. Without the variable the check skips, visibly."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

import pyfastopt

pytestmark = pytest.mark.skipif(
    os.environ.get("PYFASTOPT_EXPECT_INSTALLED") != "1",
    reason="set PYFASTOPT_EXPECT_INSTALLED=1 to check that the installed package is tested",
)


def test_pyfastopt_is_the_installed_package():
    package = Path(pyfastopt.__file__).resolve().parent
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    assert package.parent in site, f"pyfastopt imported from {package}, not from {site}"
    core = Path(pyfastopt._core.__file__).resolve()
    assert core.parent == package, f"the compiled core comes from {core}"


def test_no_source_tree_on_sys_path():
    for entry in sys.path:
        base = Path(entry or ".").resolve()
        for candidate in (base / "pyfastopt", base / "src" / "pyfastopt"):
            assert not (candidate / "__init__.py").exists() or candidate.parent.resolve() in {
                Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")
            }, f"a pyfastopt source tree is importable through sys.path entry {entry!r}"
