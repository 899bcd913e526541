"""The default run (see `default.py`): SqueezeNet 1.1 on Fashion-MNIST, sized for a 2-core CPU."""

from train.configs import default


def get_config():
    return default.get_config()
