"""Your photos, one subfolder per class: SqueezeNet 1.1 fine-tuned from torchvision's ImageNet weights.

`python -m train --workdir runs/mine --config finetune --config.photos=PHOTOS` splits PHOTOS into
train and held-out photos (`holdout_fraction` of each class, stable: train.data.photo_split, written
to the workdir's split.json), trains, saves the checkpoint of best held-out top-1 as the model, and
writes a report of the held-out photos to workdir/report (train.reporting.write_report). An
explicit test folder replaces the split: `--config.train_folder=DIR --config.eval_folder=DIR`.

The recipe, for a few hundred to a few thousand photos: the classifier first, as a linear probe
(logistic regression on the frozen ImageNet features of the training photos, train.linear_probe),
then every layer fine-tuned by SGD with momentum at 0.003, gradients clipped to norm 1 (cosine
decay; at 0.01 unclipped the probe's larger weights made the first steps collapse the model to chance); ImageNet's random resized
crops and flips, and its normalisation; 128-pixel inputs; about 24,000 images seen in all
(`images_budget`: 8 to 60 epochs, so 200 and 5,000 photos both get a run of minutes on a 2-core
CPU). Measured (BENCHMARKS.md, "Your photos"): training the fresh classifier alone by SGD first
(`classifier_only_fraction`) learned far slower than the probe, a higher rate did worse, and label
smoothing 0.1 (the default) did about a point worse than none at 20 photos a class.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "image_folder"
    config.cache_images = True
    config.init_from = "squeezenet1_1"
    config.image_size = 128
    config.augment = "random_resized_crop"
    config.batch_size = 32
    config.eval_batch_size = 100
    config.images_budget = 24_000
    config.optimizer = "sgd"
    config.learning_rate = 0.003
    config.grad_clip_norm = 1.0
    config.warmup_steps = 20
    config.weight_decay = 5e-4
    config.label_smoothing = 0.0
    config.classifier_init = "linear_probe"
    config.num_evals = 12
    config.checkpoint_every_steps = 10_000
    config.saved_step = "best"
    config.report = True
    return config
