"""Importing pyfastopt from sources whose compiled core is missing or broken raises one clear
ImportError (what happened and the command that fixes it), never Python's "cannot import name
'_core' from partially initialized module".

Each case runs in a fresh interpreter on a temporary copy of the package's Python files.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyfastopt

PACKAGE_DIR = Path(pyfastopt.__file__).resolve().parent

# prints where `name` would be imported from, then imports it
_PROBE = """
import importlib.util, sys
name = sys.argv[1]
print("origin:", importlib.util.find_spec(name).origin, flush=True)
__import__(name)
print("imported")
"""


def _copy_sources(dest: Path) -> Path:
    """The package's Python files without any compiled module."""
    shutil.copytree(
        PACKAGE_DIR,
        dest,
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.dylib", "__pycache__"),
    )
    compiled = [p for p in dest.rglob("_core*") if p.suffix not in (".py", ".pyi")]
    assert not compiled, f"a compiled core was copied: {compiled}"
    return dest


def _import(tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "src"))
    return subprocess.run(
        [sys.executable, "-c", _PROBE, name],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def _the_one_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, "the import succeeded without a compiled core"
    assert "imported" not in out.stdout
    err = out.stderr
    assert err.count("Traceback") == 1, f"expected one traceback, got:\n{err}"
    assert "During handling" not in err and "partially initialized" not in err, err
    tail = err[err.rindex("\nImportError: ") + 1 :]
    return tail


# "pyfastopt": the real name, as a user with src/ on PYTHONPATH has it (an editable install's
# import hook takes precedence over PYTHONPATH, so there the case cannot be set up and skips);
# "pfo_sources": the same files under another name, which no installed package can shadow.
@pytest.mark.parametrize("name", ["pyfastopt", "pfo_sources"])
def test_missing_core_says_what_to_run(tmp_path, name):
    copy = _copy_sources(tmp_path / "src" / name)
    out = _import(tmp_path, name)
    origin = out.stdout.splitlines()[0] if out.stdout else ""
    if str(copy) not in origin:
        pytest.skip(f"{name} is imported from elsewhere here ({origin}): an editable install")
    tail = _the_one_error(out)
    assert tail.startswith("ImportError: pyfastopt's compiled core (pyfastopt._core) is missing")
    assert f"{copy} holds the Python sources only" in tail
    assert "\n    pip install .\n" in tail, tail


def test_core_that_fails_to_load_shows_the_loader_error(tmp_path):
    copy = _copy_sources(tmp_path / "src" / "pfo_sources")
    broken = copy / ("_core" + importlib.machinery.EXTENSION_SUFFIXES[0])
    broken.write_bytes(b"not a shared object\n")
    tail = _the_one_error(_import(tmp_path, "pfo_sources"))
    assert tail.startswith("ImportError: pyfastopt's compiled core is present"), tail
    assert str(broken) in tail and "could not be loaded" in tail
    assert "is missing" not in tail
    if sys.platform.startswith("linux"):  # the dynamic loader's own words are passed on
        assert "file too short" in tail or "invalid ELF header" in tail, tail
