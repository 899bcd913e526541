"""SqueezeNet 1.1 on CIFAR-10 (TFDS `cifar10`, or JPEG class folders with `dataset=image_folder`).

Differs from the default run in the data, the 32-pixel images (the dataset's own size), the
augmentation (the dataset's own: crops and flips), 30 epochs and a learning rate of 2e-3.
For the folders: --config.dataset=image_folder --config.train_folder=DIR/train
--config.eval_folder=DIR/test (with the CIFAR statistics kept by --config.mean / --config.std if
wanted; image folders default to ImageNet's).
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "cifar10"
    config.image_size = 32
    config.num_epochs = 30.0
    config.learning_rate = 2e-3
    return config
