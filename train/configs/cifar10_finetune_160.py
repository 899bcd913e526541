"""The `cifar10_finetune` model trained on at 160 pixels: the second stage of progressive resizing.

Starts from the first stage's exported model (`init_from`: `runs/cifar10_finetune/model`, the
README's workdir; override it for another) and keeps its 10-class classifier. Differs from
`cifar10_finetune` in the input (160 pixels instead of 128), the learning rate (a warm restart at
half the first stage's peak, with a short warmup and cosine decay) and the length (4 epochs). The
accuracy and wall time of both stages on a 2-core CPU are in BENCHMARKS.md.
"""

from train.configs import cifar10_finetune


def get_config():
    config = cifar10_finetune.get_config()
    config.init_from = "runs/cifar10_finetune/model"
    config.image_size = 160
    config.num_epochs = 4.0
    config.learning_rate = 0.005
    config.warmup_steps = 100
    return config
