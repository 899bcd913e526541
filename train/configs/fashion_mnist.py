"""The default main job: SqueezeNet 1.1 on Fashion-MNIST, sized for a 2-core CPU (20 epochs).

Images are upsampled from 28 to 64 pixels and kept grayscale (in_channels=1). SqueezeNet 1.1
downsamples by 16 before its last four Fire modules: at 64 pixels they see 3x3 maps, at 32 pixels
1x1 maps, where test top-1 plateaued at 90.4% while the train accuracy kept rising. Random
left-right flips (clothes are symmetric); random crops slowed learning more than 20 epochs allow.
Adam with warmup + cosine decay, label smoothing 0.1. Measured (BENCHMARKS.md): 92.37% test top-1
in 44 minutes on a 2-core CPU. The data comes from `manual_dir` (the four idx files, e.g.
../shared/data/fashion-mnist) when set, else Debian's dataset-fashion-mnist, else TFDS.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "fashion_mnist"
    config.image_size = 64
    config.channels = 1
    config.augment = "flip"
    config.model = "squeezenet1_1"
    config.batch_size = 128
    config.eval_batch_size = 500
    config.num_epochs = 20.0
    config.learning_rate = 1e-3
    config.schedule = "warmup_cosine"
    config.warmup_steps = 500
    config.label_smoothing = 0.1
    config.checkpoint_every_steps = 1000
    return config
