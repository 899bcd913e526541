"""Every training setting with its default: the default run, SqueezeNet 1.1 on Fashion-MNIST (20 epochs).

The one source of defaults: presets start from `get_config()` and set only what differs, and the
input pipeline reads a key absent from a config here. Keys set to a placeholder (None) fall back to
the dataset's own value (see train.input_pipeline).

The default run is sized for a 2-core CPU. Images are upsampled from 28 to 64 pixels and kept
grayscale (the dataset's own channel). SqueezeNet 1.1 downsamples by 16 before its last four Fire
modules: at 64 pixels they see 3x3 maps, at 32 pixels 1x1 maps, where test top-1 plateaued while
the train accuracy kept rising. Random left-right flips (the dataset's own augmentation: clothes are
symmetric; random crops slowed learning more than 20 epochs allow). Adam with warmup + cosine
decay, label smoothing 0.1. Its accuracy and time are in BENCHMARKS.md. The data comes from
`manual_dir` (the four idx files, e.g. ../shared/data/fashion-mnist) when set, else Debian's
dataset-fashion-mnist, else TFDS.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Data (read by train.input_pipeline).
    config.dataset = "fashion_mnist"  # "fashion_mnist", "cifar10", "imagenet2012", a TFDS name, "image_folder"
    config.data_dir = config_dict.placeholder(str)  # TFDS data dir
    config.manual_dir = config_dict.placeholder(str)  # TFDS manual dir / the Fashion-MNIST idx files
    config.train_folder = config_dict.placeholder(str)  # "image_folder": one subfolder per class
    config.eval_folder = config_dict.placeholder(str)
    config.photos = config_dict.placeholder(str)  # "image_folder": ONE folder of class subfolders, split by the program
    config.holdout_fraction = 0.2  # photos: of each class, held out (train.data.photo_split)
    config.train_split = config_dict.placeholder(str)
    config.eval_split = config_dict.placeholder(str)
    config.image_size = 64  # None: the dataset's own
    config.channels = config_dict.placeholder(int)  # None: the dataset's own; 1 or 3
    config.augment = config_dict.placeholder(str)  # None: the dataset's own; see train.data.transforms.AUGMENTATIONS
    config.mean = config_dict.placeholder(tuple)  # None: the dataset's own per-channel statistics
    config.std = config_dict.placeholder(tuple)
    config.synthetic_train_examples = 256  # "synthetic" (random images, for tests) only
    config.synthetic_eval_examples = 100
    config.synthetic_num_classes = 10
    config.num_workers = 0  # grain worker processes (0: threads)
    config.prefetch = 4  # batches prepared ahead
    config.cache_images = False  # "image_folder": decode every image once, at the start, into memory

    # Model (flax_squeezenet.create_model).
    config.model = "squeezenet1_1"
    config.dropout_rate = 0.5
    config.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)
    config.init_from = config_dict.placeholder(str)  # pretrained name or save_pretrained directory

    # Optimisation (train.optim).
    config.batch_size = 128  # global, over all devices and processes
    config.eval_batch_size = config_dict.placeholder(int)  # None: batch_size
    config.num_epochs = 20.0
    config.num_train_steps = -1  # > 0 overrides num_epochs
    # > 0: num_epochs is images_budget / train images, clipped to [min_epochs, max_epochs] (train.run):
    # small data gets more epochs, large data fewer, so 200 and 5,000 photos both get a sensible run.
    config.images_budget = 0
    config.min_epochs = 8.0
    config.max_epochs = 60.0
    config.optimizer = "adam"  # "adam", "adamw" or "sgd" (momentum)
    config.learning_rate = 1e-3
    config.schedule = "warmup_cosine"  # "constant", "linear" (the paper's decay to 0), "warmup_cosine", "cosine_restarts"
    config.warmup_steps = 500
    config.cycle_steps = 0  # "cosine_restarts" only: the length of each cosine cycle
    config.end_learning_rate_factor = 0.0  # final learning rate of linear / cosine, times learning_rate
    config.weight_decay = 0.0  # adamw: decoupled decay; sgd: L2 added to the gradient
    config.momentum = 0.9  # sgd only
    config.grad_clip_norm = 0.0  # > 0: clip gradients to this global norm
    config.label_smoothing = 0.1
    # Fine-tuning (train.optim.train_classifier_first): for the first classifier_only_fraction of the
    # steps only the classifier learns; after, every other layer at backbone_lr_factor x the rate.
    config.classifier_only_fraction = 0.0
    config.backbone_lr_factor = 1.0
    config.classifier_init = "random"  # or "linear_probe": fitted on the frozen features first (train.linear_probe)

    # Pruning (flax_squeezenet.compression.pruning): magnitude pruning with retraining, reached along
    # Zhu & Gupta's cubic schedule; pruned weights stay exactly zero and the masks are checkpointed.
    # prune_density: None (off), a float in (0, 1] for every conv layer, or "paper" for the Deep
    # Compression v1.0 model's per-layer table (about 34% of the weights kept). prune_layer_densities
    # overrides layers by name: --config.prune_layer_densities="{'classifier': 0.2, 'fire9/expand3x3': 0.3}".
    config.prune_density = config_dict.placeholder(object)
    config.prune_layer_densities = ml_collections.ConfigDict()
    config.prune_begin_step = 0  # masks recomputed every prune_frequency steps from here
    config.prune_end_step = -1  # the target densities are reached here; -1: at 2/3 of num_train_steps
    config.prune_frequency = 100

    # Weight sharing (flax_squeezenet.compression.trained_sharing): Deep Compression's trained
    # quantization. Each conv kernel is clustered at step 0 (k-means over its non-zero weights,
    # 2**bits - 1 shared values), the first 2 steps move the weights onto them, later steps train
    # each shared value by its weights' summed gradient. Zeros (pruned weights) stay zero.
    config.share_bits = config_dict.placeholder(int)  # None: off; bits per weight of every conv, 1 to 8
    config.share_layer_bits = ml_collections.ConfigDict()  # conv path -> bits, e.g. {"classifier": 4}

    # Weight averaging (train.averaging): evaluate and save the mean of the parameters reached every
    # average_every_steps steps after average_from_step (stochastic weight averaging: with a constant
    # learning rate every step, with "cosine_restarts" every cycle_steps); None: off. With pruning
    # it must start once the target densities are reached.
    config.average_from_step = config_dict.placeholder(int)
    config.average_every_steps = 1

    # Runtime.
    config.seed = 0
    config.parallel = "jit"  # "jit" (a device mesh) or "pmap"
    config.log_every_steps = 50
    config.eval_every_steps = 0  # 0: num_evals spread over the run, or once per epoch when that is 0
    config.num_evals = 0
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3  # the latest K, plus the best by eval top-1
    config.measure_pipeline_throughput = True
    config.model_dir = config_dict.placeholder(str)  # where the trained model is saved; None: workdir/model
    config.saved_step = "last"  # the state saved as the model: "last", or "best" (by eval top-1)
    config.report = False  # write the eval split's report (train.reporting.write_report) into workdir/report
    config.distributed = False  # call jax.distributed.initialize() (arguments from the environment)
    config.coordinator_address = config_dict.placeholder(str)
    config.num_processes = config_dict.placeholder(int)
    config.process_id = config_dict.placeholder(int)
    return config
