"""The default preset's train step as XLA:CPU compiles it, without source locations.

`python bench/train_step_hlo.py OUT.txt` from the root of two checkouts, then `diff` the two files:
a refactoring that moves code (issue #29) must leave them equal. Prints the text's sha256.
"""

import functools
import hashlib
import re
import sys

import jax
import jax.numpy as jnp

import flax_squeezenet
from train import configs, optim, steps
from train import state as state_lib

# File names, line numbers and stack frames change when code moves; the computation does not.
LOCATIONS = re.compile(r'loc\(.*?\)|#loc\d*[^\n]*|metadata=\{[^}]*\}|^\d+ "/[^\n]*$|^[^\n]*file_name_id[^\n]*$|stack_frame_id=\d+', re.M)


def compiled_train_step() -> str:
    config = configs.get_preset("fashion_mnist")
    model = flax_squeezenet.create_model(config.model, num_classes=10, in_channels=1, dropout_rate=config.dropout_rate)
    schedule = optim.create_learning_rate_schedule(config, num_train_steps=1000)
    state = state_lib.create_train_state(model, optim.create_optimizer(config, schedule, 1000), (config.image_size,) * 2 + (1,), 0)
    batch = {"image": jnp.zeros((config.batch_size, config.image_size, config.image_size, 1)),
             "label": jnp.zeros((config.batch_size,), jnp.int32)}  # fmt: skip
    step = jax.jit(functools.partial(steps.train_step, learning_rate_fn=schedule, label_smoothing=config.label_smoothing))
    return LOCATIONS.sub("", step.lower(state, batch).compile().as_text())


if __name__ == "__main__":
    text = compiled_train_step()
    with open(sys.argv[1], "w") as f:
        f.write(text)
    print(hashlib.sha256(text.encode()).hexdigest())
