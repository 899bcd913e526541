"""SqueezeNet 1.1 on ImageNet-1k (TFDS `imagenet2012`; the archives go in `manual_dir`), as the paper.

The paper's recipe: SGD with momentum 0.9, learning rate 0.04 decayed linearly to 0 without warmup,
weight decay 2e-4, no label smoothing, batch 512, 227-pixel crops (224 here, as torchvision; random
resized crops, the dataset's own augmentation); dropout 0.5. Meant for accelerators (bfloat16).
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "imagenet2012"
    config.image_size = 224
    config.batch_size = 512
    config.num_epochs = 68.0
    config.optimizer = "sgd"
    config.learning_rate = 0.04
    config.schedule = "linear"
    config.warmup_steps = 0
    config.weight_decay = 2e-4
    config.label_smoothing = 0.0
    config.num_workers = 8
    config.checkpoint_every_steps = 2000
    config.dtype = "bfloat16"
    return config
