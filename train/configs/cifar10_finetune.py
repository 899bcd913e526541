"""SqueezeNet 1.1 fine-tuned on CIFAR-10 from torchvision's ImageNet weights (the Deep Compression starting model).

Differs from the default run in the data (the CIFAR-10 JPEG class folders of ../shared, decoded once
into memory), the start (`init_from`: torchvision's squeezenet1_1, a fresh 10-class classifier),
the input (three channels upsampled from 32 to 128 pixels, normalised with ImageNet's statistics as
the weights expect; zero-padded random crops and flips), and the optimiser (SGD with momentum,
learning rate 0.01 with a short warmup and cosine decay, weight decay 5e-4, batch 64) over 6 epochs.
Its accuracy and wall time on a 2-core CPU are in BENCHMARKS.md.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "image_folder"
    config.train_folder = "../shared/data/cifar10-jpeg/train"
    config.eval_folder = "../shared/data/cifar10-jpeg/test"
    config.cache_images = True
    config.init_from = "../shared/pretrained/torchvision_squeezenet1_1.ncnn.param"
    config.image_size = 128
    config.augment = "crop_flip"
    config.batch_size = 64
    config.eval_batch_size = 250
    config.num_epochs = 6.0
    config.optimizer = "sgd"
    config.learning_rate = 0.01
    config.warmup_steps = 300
    config.weight_decay = 5e-4
    config.checkpoint_every_steps = 782
    return config
