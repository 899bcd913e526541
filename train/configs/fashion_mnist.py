"""The default main job: SqueezeNet 1.1 on Fashion-MNIST, sized for a 2-core CPU (about 20 epochs).

Images are upsampled from 28 to 32 pixels (SqueezeNet 1.1 needs 17 or more; 32 keeps a 3x3 map
before the last pooling) and kept grayscale (in_channels=1). No augmentation: at this size the
network underfits Fashion-MNIST for tens of epochs, and in a measured comparison random crops and
flips cost 7 points of test top-1 after one epoch (see BENCHMARKS.md). Adam with warmup + cosine
decay. The data comes from `manual_dir` (the four idx files, e.g. ../shared/data/fashion-mnist)
when set, else Debian's dataset-fashion-mnist, else TFDS.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "fashion_mnist"
    config.image_size = 32
    config.channels = 1
    config.augment = "none"
    config.model = "squeezenet1_1"
    config.batch_size = 128
    config.eval_batch_size = 500
    config.num_epochs = 20.0
    config.learning_rate = 1e-3
    config.schedule = "warmup_cosine"
    config.warmup_steps = 500
    config.label_smoothing = 0.0
    config.checkpoint_every_steps = 1000
    return config
