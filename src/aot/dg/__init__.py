"""Discriminator Guidance (Kim et al., ICML 2023) for EDM and EDM-AOT models.

Each part matches the public DG code (alsdudrla10/DG) in behaviour and file layout:

* `adm`: `ADMEncoder`, guided-diffusion's encoder ("half U-Net") classifier as DG builds it, whose
  state dicts are DG's (its `32x32_classifier.pt` and discriminator heads load unchanged);
* `discriminator`: `GuidedDiscriminator` (feature extractor + ADM head on its 8x8 features,
  `disc(x, t, class_labels)` the probability that the VP-perturbed `x` is real), the VP-SDE
  bookkeeping, and the files, ours and DG's;
* `sampler`: `dg_sampler`, EDM's Heun sampler with DG's correction (EDM-G++), and `generate`, a
  guided sample set through aot.generate's shards (key `dg{aot|plain}-heun-n18-rho7`);
* `training`: discriminator training (`train`, `train_discriminator`), with AOT noise assignment
  per pool of N images when asked.

Commands: `python -m aot dg train ...` and `python -m aot dg generate ...` (aot.cli.dg).
"""

from .adm import ADMEncoder, adm_channel_mult, dg_classifier_kwargs, dg_discriminator_kwargs, timestep_embedding
from .discriminator import (
                            DG_CLASSIFIER_URL,
                            DG_DISCRIMINATOR_URLS,
                            DG_REPO,
                            GuidedDiscriminator,
                            load_discriminator,
                            load_feature_extractor,
                            sample_vp_time,
                            save_discriminator,
                            save_encoder,
                            vp_cosine_time,
                            vp_marginal,
                            vp_time_from_sigma,
)
from .sampler import dg_sampler, generate, grad_log_ratio
from .training import TrainingData, load_training_data, pool_noise, to_model_range, train, train_discriminator

__all__ = [
    "ADMEncoder", "adm_channel_mult", "dg_classifier_kwargs", "dg_discriminator_kwargs", "timestep_embedding",
    "DG_CLASSIFIER_URL", "DG_DISCRIMINATOR_URLS", "DG_REPO", "GuidedDiscriminator", "load_discriminator",
    "load_feature_extractor", "sample_vp_time", "save_discriminator", "save_encoder", "vp_cosine_time",
    "vp_marginal", "vp_time_from_sigma", "dg_sampler", "generate", "grad_log_ratio", "TrainingData",
    "load_training_data", "pool_noise", "to_model_range", "train", "train_discriminator",
]
