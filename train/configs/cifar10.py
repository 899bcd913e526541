"""SqueezeNet 1.1 on CIFAR-10 (TFDS `cifar10`, or JPEG class folders with `dataset=image_folder`).

For the folders: --config.dataset=image_folder --config.train_folder=DIR/train
--config.eval_folder=DIR/test (with the CIFAR statistics kept by --config.mean / --config.std if
wanted; image folders default to ImageNet's).
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "cifar10"
    config.image_size = 32
    config.channels = 3
    config.augment = "crop_flip"
    config.model = "squeezenet1_1"
    config.batch_size = 128
    config.eval_batch_size = 500
    config.num_epochs = 30.0
    config.learning_rate = 2e-3
    config.schedule = "warmup_cosine"
    config.warmup_steps = 500
    config.weight_decay = 0.0
    config.label_smoothing = 0.1
    config.checkpoint_every_steps = 1000
    return config
