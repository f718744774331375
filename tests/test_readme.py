"""The README's 30-second example runs as written and really trains."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    if not README.exists():
        pytest.skip("README not next to the tests")
    text = README.read_text(encoding="utf-8")
    section = text.split("## 30-second example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    import torch

    assert isinstance(scope["opt"], torch.optim.Adam)
    assert float(scope["opt"].state[next(scope["model"].parameters())]["step"]) == 100
    reloaded = torch.optim.Adam(scope["model"].parameters())
    reloaded.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert "simd_path" in capsys.readouterr().out
