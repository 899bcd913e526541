"""The Colab notebook: runs top to bottom on CPU in its TINY setting, and is committed without outputs."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys

import nbformat
import pytest
from conftest import SHARED, require_shared
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "colab" / "squeezenet_tpu.ipynb"
KERNEL_NAME = "flax-squeezenet-test"
CAT_CLASSES = ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")


def install_kernel(jupyter_dir: pathlib.Path) -> None:
    """A kernelspec running ipykernel with this interpreter (the venv's), whatever else is installed."""
    spec_dir = jupyter_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "flax-squeezenet test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def parameters_cell_index(notebook: nbformat.NotebookNode) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def text_of(cell: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed with SQUEEZENET_NOTEBOOK_TINY=1 on 2 CPU devices, and its WORKDIR."""
    root = tmp_path_factory.mktemp("notebook")
    install_kernel(root / "jupyter")
    workdir = root / "workdir"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # As papermill does: a cell after the parameters cell overrides them.
    injected = nbformat.v4.new_code_cell(f"WORKDIR = {str(workdir)!r}")
    notebook.cells.insert(parameters_cell_index(notebook) + 1, injected)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SQUEEZENET_NOTEBOOK_TINY", "1")
        env.setenv("JUPYTER_PATH", str(root / "jupyter"))
        env.setenv("JAX_PLATFORMS", "cpu")
        env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
        env.setenv("FLAX_SQUEEZENET_SHARED", str(SHARED))
        env.setenv("FLAX_SQUEEZENET_CACHE", str(root / "cache"))
        client = NotebookClient(
            notebook, kernel_name=KERNEL_NAME, timeout=240, resources={"metadata": {"path": str(root)}}
        )
        client.execute()
    return notebook, workdir


@pytest.mark.slow
def test_notebook_runs_and_leaves_checkpoints_curves_and_model(executed):
    notebook, workdir = executed
    outputs = "\n".join(text_of(cell) for cell in notebook.cells)
    assert "2 devices" in outputs
    assert "global batch 16 (8 per device)" in outputs
    assert "trained to step 8" in outputs
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] == 8
    assert (workdir / "model" / "metadata.json").is_file()
    assert (workdir / "curves.png").read_bytes().startswith(b"\x89PNG")
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 4, "expected the classified image, the curves, the confusion matrix and the mistakes inline"
    assert "top-1" in outputs and "top-5" in outputs


@pytest.mark.slow
@pytest.mark.skipif(not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")),
                    reason="needs the export extra (onnx, onnxruntime)")  # fmt: skip
def test_notebook_exports_onnx_that_agrees_with_jax(executed):
    notebook, workdir = executed
    assert (workdir / "squeezenet.onnx").is_file()
    outputs = "\n".join(text_of(cell) for cell in notebook.cells)
    difference = re.search(r"largest difference from JAX: (\S+)", outputs)
    assert difference, "the ONNX cell printed no comparison"
    assert float(difference[1]) < 1e-4


@pytest.mark.slow
def test_notebook_fine_tunes_on_a_photos_folder_and_reports(executed):
    notebook, workdir = executed
    outputs = "\n".join(text_of(cell) for cell in notebook.cells)
    assert re.search(r"held-out top-1 \d+\.\d+% \(\d+ photos\)", outputs), "the photos cell printed no result"
    run = workdir.parent / (workdir.name + "-photos")
    assert (run / "split.json").is_file() and (run / "report" / "confusion.png").is_file()


@pytest.mark.slow
def test_notebook_classifies_the_cat_offline_with_pretrained_weights(executed):
    for needed in ("pretrained/torchvision_squeezenet1_1.ncnn.param", "images/cat2.jpeg", "data/imagenet_classes.txt"):
        require_shared(needed)
    notebook, _ = executed
    classified = next(text_of(cell) for cell in notebook.cells if "weights:" in text_of(cell))
    top1 = classified.split("weights:")[1].splitlines()[1]
    assert any(name in top1 for name in CAT_CLASSES), classified


def test_committed_notebook_is_valid_and_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    parameters_cell_index(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
