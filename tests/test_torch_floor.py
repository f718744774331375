"""The oldest torch pyproject.toml allows (2.5) must keep importing pyfastopt.

CI runs one torch (2.13), so a private torch name that newer versions added would go unnoticed
(pyfastopt once imported ``torch.optim.optimizer._to_scalar``, which torch 2.5 lacks, and did not
import at all there). Every private name pyfastopt imports from torch is therefore listed here,
each checked to exist in torch 2.5.1 (the whole suite passed there: README, "Supported torch
versions"); a new one must be checked the same way before it joins the list.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import pyfastopt

#: private torch names pyfastopt imports, each present in torch 2.5.1
CHECKED_ON_25 = {
    ("torch.optim.lbfgs", "_cubic_interpolate"),
    ("torch.optim.optimizer", "_get_scalar_dtype"),
}
#: torch.optim classes pyfastopt derives from, each present in torch 2.5.1
CLASSES_ON_25 = {
    "ASGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "LBFGS", "NAdam",
    "Optimizer", "RAdam", "RMSprop", "Rprop", "SGD", "SparseAdam",
}  # fmt: skip


def _sources() -> list[Path]:
    root = Path(pyfastopt.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) > 20
    return files


def test_private_torch_imports_are_checked_on_the_oldest_torch():
    found = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
                found |= {(node.module, a.name) for a in node.names if a.name.startswith("_")}
    assert found <= CHECKED_ON_25, f"check these on torch 2.5 first: {found - CHECKED_ON_25}"


def test_torch_optim_classes_used_exist_on_the_oldest_torch():
    used = set()
    for path in _sources():
        used |= set(re.findall(r"torch\.optim\.([A-Z][A-Za-z]+)\b", path.read_text()))
    used.discard("X")  # (docstrings: "torch.optim.X")
    missing = used - CLASSES_ON_25
    if missing:
        pytest.fail(f"check these torch.optim classes on torch 2.5 first: {sorted(missing)}")
