"""The README's NNX, Hub-layout, conventions and summary examples run as written (they cannot rot)."""

import os
import pathlib
import re

import pytest
from conftest import require_shared

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
MARKED_BLOCK = re.compile(r"<!-- readme-test -->\n```python\n(.*?)```", re.DOTALL)


def test_marked_readme_examples_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("safetensors")
    blocks = MARKED_BLOCK.findall(README.read_text())
    assert len(blocks) == 4, "the four marked examples (NNX, Hub layout, conventions, summary)"
    (tmp_path / "shared").symlink_to(require_shared().resolve())
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("FLAX_SQUEEZENET_CACHE", str(tmp_path / "cache"))
    for block in blocks:
        namespace = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (our own README)
    assert (tmp_path / "work" / "squeezenet1_1_hub" / "model.safetensors").is_file()
    assert "fire9" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "work")) == ["squeezenet1_1_hub"]
