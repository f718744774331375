"""The one ImportError that ``import pyfastopt`` raises when its compiled core cannot be imported.

Two cases, told apart because they have different fixes:

* the core is *missing*: a source tree (``src/`` on ``sys.path`` or ``PYTHONPATH``) whose C++ core
  was never built, or a copy of the Python files alone. Fix: install the package.
* the core is *present but does not load*: a build for another Python or CPU, a broken file, or an
  OpenMP runtime that is not there. The original loader error is shown.

Like numpy's and torch's own messages, it says what happened and the command that fixes it,
instead of Python's "cannot import name '_core' from partially initialized module".
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: What fixes a missing core, from the root of a clone (the README's quick start does the same).
INSTALL_COMMAND = "pip install ."


def find_core(package: str) -> Path | None:
    """Where the import system would load ``<package>._core`` from, or None if it finds none.

    Asks the import system rather than listing the package folder, so that an editable install
    (sources in the clone, the compiled core in the build or site-packages folder) is judged right.
    """
    try:
        spec = importlib.util.find_spec(f"{package}._core")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    return Path(spec.origin)


def core_import_error(exc: ImportError, package: str, package_dir: Path) -> ImportError:
    """The ImportError to raise instead of ``exc``, the failure of ``from . import _core``."""
    found = find_core(package)
    if found is None:
        message = (
            f"pyfastopt's compiled core (pyfastopt._core) is missing: {package_dir} holds the "
            "Python sources only. This is a source tree that was not built and installed "
            "(is the repository's src/ on sys.path or PYTHONPATH?). Build and install pyfastopt "
            f"from the root of the clone with\n\n    {INSTALL_COMMAND}\n\n(or the README's quick "
            "start command; `pip install -e .` for development) and import it without src/ "
            "on the path."
        )
    else:
        detail = f"{type(exc).__name__}: {exc}"
        hint = (
            f"Rebuild it for this interpreter from the root of the clone with `{INSTALL_COMMAND}`."
        )
        text = str(exc)
        if "undefined symbol" in text and ("omp_" in text or "GOMP_" in text):
            hint = (
                "The core uses the OpenMP runtime (libgomp) that torch loads into the process; "
                "this torch did not make one available. Import a torch wheel from PyPI, or "
                "rebuild pyfastopt with its own runtime: "
                f"`{INSTALL_COMMAND} -C cmake.define.PFO_LINK_OPENMP=ON`."
            )
        message = (
            f"pyfastopt's compiled core is present ({found}) but could not be "
            f"loaded:\n\n    {detail}\n\n{hint}"
        )
    return ImportError(message, name="pyfastopt._core", path=str(package_dir))
