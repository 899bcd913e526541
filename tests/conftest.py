"""Shared fixtures: the read-only `../shared` data folder, and a compilation cache for tests and subprocesses."""

import os
import pathlib

import jax
import pytest

from flax_squeezenet.weights.conventions import InputConvention

GREY = InputConvention(mean=(0.5,), std=(0.25,), resize_size=64, crop_size=64, channel_order="L")
"""An input convention for the tests' 1-channel models, which `save_pretrained` needs."""
SHARED = pathlib.Path(os.environ.get("FLAX_SQUEEZENET_SHARED", pathlib.Path(__file__).resolve().parents[2] / "shared"))


def require_shared(relative: str = "") -> pathlib.Path:
    """The path under ../shared, skipping the test when it is absent (failing if REQUIRE_SHARED=1)."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} is absent: this test needs the project's shared data folder (../shared)"
        if os.environ.get("REQUIRE_SHARED") == "1":
            pytest.fail(message + " and REQUIRE_SHARED=1")
        pytest.skip(message)
    return path


@pytest.fixture
def shared():
    return require_shared()


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """A test worker and its `python -m train` subprocesses share JAX's persistent compilation cache:
    a test that trains, kills and resumes the same run compiles its steps once (the cached
    executable is the same program, so exact-resume tests still compare bit for bit)."""
    cache = tmp_path_factory.mktemp("jax-compilation-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
        # A `python -m train` also compiles some 300 small programs (eager initialisation, k-means,
        # finiteness checks), each under the default 1 s threshold: together about 10 s a process.
        patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        # In this process eager ops stay in memory, but each `train_in_process` jits a new step
        # function: the same train step compiled again unless the persistent cache has it.
        jax.config.update("jax_compilation_cache_dir", str(cache))
        yield cache
        jax.config.update("jax_compilation_cache_dir", None)
