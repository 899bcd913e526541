"""The package's shape: the import rules of pyproject.toml's import-linter contracts hold, and would
catch an upward import or a circle; every public name imports from where users import it."""

import importlib
import re
import shutil
import subprocess
import sys

import pytest

from train_helpers import REPO

LINT_IMPORTS = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]

# Every name `from flax_squeezenet import ...` gave before the subpackage layout (issue #29), and since.
PUBLIC = {
    "flax_squeezenet": [
        "DownloadError", "IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "PRETRAINED", "V1_0", "V1_1", "ConvStage",
        "Convolution", "FireModule", "FireStage", "InputConvention", "Layer", "PoolStage", "SqueezeNet", "Stage",
        "StageFeature", "UnsafePickleError", "cache_dir", "compiler_options", "count_params", "create_model",
        "feature_info", "imagenet_class_names", "input_convention", "load_image", "load_pretrained", "layer_plan",
        "load_pth", "metaparameter_stages", "min_input_size", "preprocess", "save_onnx", "save_pretrained",
        "save_tflite", "squeezenet1_0", "squeezenet1_0_complex_bypass", "squeezenet1_0_simple_bypass",
        "squeezenet1_1", "squeezenet_metaparameters", "summary", "to_onnx",
    ],
    "flax_squeezenet.nnx": [
        "FireModule", "SqueezeNet", "load_pretrained", "squeezenet1_0", "squeezenet1_0_complex_bypass",
        "squeezenet1_0_simple_bypass", "squeezenet1_1", "to_linen", "to_nnx",
    ],
    "flax_squeezenet.compression": [
        "FORMATS", "CompressedModel", "SharedKernel", "compress", "encoded_size", "read_compressed", "read_source",
        "save_compressed",
    ],
}  # fmt: skip


def _lint(root):
    return subprocess.run(LINT_IMPORTS, cwd=root, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("flax_squeezenet/zoo/models.py", "from flax_squeezenet.weights import pretrained", "import only downwards"),
        ("flax_squeezenet/weights/sparse.py", "from flax_squeezenet.weights import sqz", "No import circles"),
        ("flax_squeezenet/compression/api.py", "import train.run", "never imports the training program"),
    ],
)
def test_the_contracts_catch_an_upward_import_a_circle_and_the_training_program(tmp_path, module, line, broken):
    for name in ("flax_squeezenet", "train"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}\n")
    done = _lint(tmp_path)
    assert done.returncode == 1, done.stdout
    assert re.search(f"{broken}.* BROKEN", done.stdout), done.stdout


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_every_public_name_imports(package):
    module = importlib.import_module(package)
    missing = [name for name in PUBLIC[package] if not hasattr(module, name)]
    assert not missing, f"{package} lost {missing}"
    assert set(PUBLIC[package]) <= set(module.__all__)


def test_the_library_imports_without_the_training_program_tensorflow_or_torch():
    code = ("import sys, flax_squeezenet, flax_squeezenet.nnx, flax_squeezenet.compression, flax_squeezenet.cli.export, "
            "flax_squeezenet.cli.compress; bad = [m for m in ('train', 'tensorflow', 'torch') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
