"""The discriminator of Discriminator Guidance and its files.

A discriminator d(x_t, t) tells real from generated images perturbed by DG's VP-SDE (linear beta
schedule of Song et al. 2021) at VP time t in [0, 1]: `GuidedDiscriminator` is a frozen (or jointly
trained) `ADMEncoder` feature extractor followed by a small ADM head on its 8x8 features. Here too:
the VP-SDE bookkeeping that maps EDM noise levels to VP times, and the files, ours and DG's:

* our discriminator file (`save_discriminator`): the head's DG state dict and constructor arguments,
  the feature extractor inline (when trained) or by path (DG's frozen ADM classifier);
* DG's released files: the ADM classifier `32x32_classifier.pt` and the heads `discriminator_60.pt`
  / `discriminator_250.pt` (bare state dicts, read in DG's configuration); `import_discriminator`
  turns a given head into our file, so that a model is guided by it instead of a trained one.

All of them load with `torch.load(..., weights_only=True)` (`aot.checkpoints.load_torch_file`) and
are checked before anything is built: damaged, foreign or crafted files are one-line UserErrors, and
constructor arguments are tried on the meta device first, so a file asking for a huge encoder is
refused without allocating it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..checkpoints import build_with_weights, checked_dict, checked_kwargs, checked_state_dict, load_torch_file
from ..errors import UserError
from ..files import atomic_path, save_torch_atomic
from ..pickles import brief, describe_failure, is_int, one_line
from .adm import ADMEncoder, dg_classifier_kwargs, dg_discriminator_kwargs

# VP-SDE of DG's classifier_lib (linear beta schedule, Song et al. 2021).
BETA_MIN = 0.1
BETA_MAX = 20.0
COSINE_S = 0.008
# DG's importance sampling of diffusion time during discriminator training starts here.
VP_T_MIN = 1e-5
# Probability clipping before the log-ratio, as DG does.
PROB_EPS = 1e-5

DG_REPO = "https://github.com/alsdudrla10/DG"
DG_CLASSIFIER_URL = "https://drive.google.com/drive/folders/1gb68C13-QOt8yA6ZnnS6G5pVIlPO7j_y"
DG_DISCRIMINATOR_URLS = {
    "cifar_uncond/discriminator_60.pt": "https://drive.google.com/drive/folders/1Mf3F1yGfWT8bO0_iOBX-PWG3O-OLROE2",
    "cifar_cond/discriminator_250.pt": "https://drive.google.com/drive/folders/1P1u7cz7kY1BJDPVrPNiFcksy_HCHY_bI",
}

DISCRIMINATOR_FORMAT = "aot-dg-discriminator/1"
ENCODER_FORMAT = "aot-adm-encoder/1"


# ------------------------------------------------------------------------------------------------
# VP-SDE bookkeeping (DG's classifier_lib.vpsde)


def vp_time_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """VP time tau with the same signal-to-noise ratio as EDM noise level sigma (sigma^2 = e^{int beta} - 1)."""
    tau = -BETA_MIN + torch.sqrt(BETA_MIN ** 2 + 2.0 * (BETA_MAX - BETA_MIN) * torch.log(1.0 + sigma ** 2))
    return tau / (BETA_MAX - BETA_MIN)


def vp_marginal(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean coefficient and std of the VP-SDE perturbation kernel at time t."""
    log_mean = -0.25 * t ** 2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    return torch.exp(log_mean), torch.sqrt(1.0 - torch.exp(2.0 * log_mean))


def vp_cosine_time(t_lin: torch.Tensor) -> torch.Tensor:
    """Cosine-schedule time with the same mean coefficient (DG uses it for ADM's 64x64 classifier)."""
    f_0 = np.cos(COSINE_S / (1.0 + COSINE_S) * np.pi / 2.0) ** 2
    sqrt_alpha = torch.exp(-0.25 * t_lin ** 2 * (BETA_MAX - BETA_MIN) - 0.5 * t_lin * BETA_MIN)
    return (1.0 + COSINE_S) * 2.0 / np.pi * torch.arccos(np.sqrt(f_0) * sqrt_alpha) - COSINE_S


def _integral_beta(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * t ** 2 * (BETA_MAX - BETA_MIN) + t * BETA_MIN


def _antiderivative(t: torch.Tensor | float) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32)
    return torch.log(1.0 - torch.exp(-_integral_beta(t))) + _integral_beta(t)


def sample_vp_time(batch: int, generator: torch.Generator | None = None, t_min: float = VP_T_MIN,
                   importance_sampling: bool = True) -> torch.Tensor:
    """Diffusion times for discriminator training (float32, CPU), importance-sampled as DG does.

    The density on [t_min, 1] is proportional to beta(t) / (1 - exp(-int_0^t beta)) (the likelihood
    weighting of Song et al. 2021), sampled by inverting its closed-form CDF.
    """
    u = torch.rand(batch, generator=generator)
    if not importance_sampling:
        return u * (1.0 - t_min) + t_min
    z = _antiderivative(1.0) - _antiderivative(t_min)
    inner = torch.log(1.0 + torch.exp(z * u + _antiderivative(t_min)))
    return (-BETA_MIN + torch.sqrt(BETA_MIN ** 2 + 2 * (BETA_MAX - BETA_MIN) * inner)) / (BETA_MAX - BETA_MIN)


# ------------------------------------------------------------------------------------------------
# Discriminator = frozen (or jointly trained) feature extractor + ADM head


class GuidedDiscriminator(nn.Module):
    """`disc(x, t, class_labels=None)` -> probability [N] that the VP-perturbed `x` at VP time `t` is real.

    The feature extractor's features (before its pooling head) feed the discriminator head with the
    same time; class labels go to the head only (as in DG's classifier_lib).
    """

    def __init__(self, feature_extractor: ADMEncoder, head: ADMEncoder) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.head = head

    @property
    def condition(self) -> bool:
        return bool(self.head.condition)

    def _times(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                logits: bool = False) -> torch.Tensor:
        t = self._times(x, t)
        features = self.feature_extractor(x, timesteps=t, feature=True)
        out = self.head(features, t, sigmoid=not logits, condition=class_labels)
        return out.view(-1)

    def log_ratio(self, x: torch.Tensor, t: torch.Tensor | float,
                  class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """log(D / (1 - D)) of the clipped probability D (DG's `get_log_ratio`)."""
        p = torch.clip(self(x, t, class_labels), PROB_EPS, 1.0 - PROB_EPS)
        return torch.log(p / (1.0 - p))


# ------------------------------------------------------------------------------------------------
# Files: feature extractors (ours or DG's ADM classifier), discriminators (ours or DG's heads)


def _encoder_record(model: ADMEncoder) -> dict:
    return {"init_kwargs": dict(model.init_kwargs),
            "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}}


# Every residual block of an ADMEncoder holds 10 tensors (two norms, two convolutions, the embedding layer).
_TENSORS_PER_BLOCK = 10


def _check_block_count(init_kwargs: dict, state_dict: dict, what: str) -> None:
    """An ADMEncoder has at least depth x levels residual blocks: arguments asking for more than the
    file's tensors could fill are refused before the architecture is built at all (even on the meta
    device, millions of blocks would take long)."""
    depth = init_kwargs.get("depth", 2)
    mult = init_kwargs.get("channel_mult")
    if not is_int(depth):
        raise UserError(one_line(f"{what}: init_kwargs have depth {brief(depth, 60)}, not a whole number"))
    if mult is not None and type(mult) not in (list, tuple):
        raise UserError(one_line(f"{what}: init_kwargs have channel_mult {brief(mult, 60)}, not a list"))
    blocks = depth * (len(mult) if mult else 1)
    if blocks * _TENSORS_PER_BLOCK > len(state_dict):
        raise UserError(f"{what}: an ADMEncoder of depth {depth} has at least {blocks} residual blocks, more than "
                        f"the file's {len(state_dict)} tensors can fill")


def _build_encoder(init_kwargs: Any, state_dict: Any, what: str) -> ADMEncoder:
    """An ADMEncoder from constructor arguments and weights read from a file, both checked first; the
    architecture is built on the meta device and compared with the weights before it is allocated."""
    init_kwargs = checked_kwargs(init_kwargs, f"{what}: init_kwargs")
    state_dict = checked_state_dict(state_dict, what)
    _check_block_count(init_kwargs, state_dict, what)
    return build_with_weights("ADMEncoder", init_kwargs, state_dict, what, build=lambda kw: ADMEncoder(**kw))


def read_torch_file(path: Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, size-capped; a damaged file is a UserError naming it."""
    return load_torch_file(path, what)


def _input_weight(obj: dict, what: str) -> torch.Tensor:
    """The first convolution's weight of a bare ADM state dict (its shape gives width and channels)."""
    w = obj.get("input_blocks.0.0.weight")
    if w is None:
        raise UserError(f"{what} is not an ADM network (no input_blocks.0.0.weight)")
    if w.ndim != 4:
        raise UserError(f"{what}: input_blocks.0.0.weight has shape {list(w.shape)}, not a convolution's 4 dimensions")
    return w


def _is_bare_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and torch.is_tensor(v)
                                                        for k, v in obj.items())


def save_encoder(path: str | os.PathLike, model: ADMEncoder, **meta: Any) -> None:
    """An ADM encoder as a weights_only-safe file (constructor args + state dict), atomically."""
    save_torch_atomic({"format": ENCODER_FORMAT, **_encoder_record(model), "meta": meta}, path)


def load_feature_extractor(path: str | os.PathLike, image_size: int | None = None,
                           in_channels: int | None = None) -> ADMEncoder:
    """ADM classifier used as feature extractor: DG's `32x32_classifier.pt` (a bare state dict in
    DG's configuration for `image_size`) or an encoder file written by `save_encoder`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ADM classifier checkpoint {path} does not exist; DG publishes 32x32_classifier.pt "
                        f"at {DG_CLASSIFIER_URL} (see {DG_REPO}, 'Prepare a pre-trained classifier')")
    obj = read_torch_file(path, "ADM classifier checkpoint")
    what = f"ADM classifier checkpoint {path}"
    if isinstance(obj, dict) and obj.get("format") == ENCODER_FORMAT:
        checked_dict(obj, what, ("init_kwargs", "state_dict"))
        model = _build_encoder(obj["init_kwargs"], obj["state_dict"], what)
    elif _is_bare_state_dict(obj):
        if image_size is None:
            raise UserError(f"{what} is a bare state dict; its image size must be given")
        w = _input_weight(obj, what)
        kwargs = dg_classifier_kwargs(int(image_size), int(w.shape[1]))
        kwargs["width"] = int(w.shape[0])
        model = _build_encoder(kwargs, obj, what)
    else:
        raise UserError(f"{what} is neither DG's ADM classifier state dict nor an aot encoder file")
    if image_size is not None and model.image_size != image_size:
        raise UserError(f"{what} is for {model.image_size}x{model.image_size} images, "
                        f"the data are {image_size}x{image_size}")
    if in_channels is not None and model.in_channels != in_channels:
        raise UserError(f"{what} expects {model.in_channels} channels, the data have {in_channels}")
    return model


def save_discriminator(path: str | os.PathLike, disc: GuidedDiscriminator, extractor_path: str | None = None,
                       **meta: Any) -> None:
    """Write a discriminator: the head's plain state dict and constructor args (`head`), and the
    feature extractor either inline (`feature_extractor`, when it was trained) or by path
    (`feature_extractor_path`, DG's frozen ADM classifier). Loadable with weights_only=True; the
    head's state dict has DG's keys (`torch.save(payload["head"]["state_dict"])` is a DG checkpoint)."""
    payload: dict[str, Any] = {"format": DISCRIMINATOR_FORMAT, "head": _encoder_record(disc.head), "meta": meta}
    if extractor_path is None:
        payload["feature_extractor"] = _encoder_record(disc.feature_extractor)
    else:
        payload["feature_extractor_path"] = str(extractor_path)
        payload["feature_extractor_kwargs"] = dict(disc.feature_extractor.init_kwargs)
    save_torch_atomic(payload, path)


def _plain_meta(obj: dict, what: str) -> dict:
    """The `meta` of our files: a dict of plain values (it goes into sample sets' JSON meta)."""
    meta = obj.get("meta")
    if meta is None:
        return {}
    checked_dict(meta, f"{what}: meta")
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError, RecursionError) as exc:
        raise UserError(one_line(f"{what}: meta holds a value other than plain data "
                                 f"({describe_failure(exc)})")) from None


def _our_discriminator(obj: dict, what: str, feature_extractor: str | os.PathLike | None,
                       image_size: int | None, in_channels: int | None) -> tuple[ADMEncoder, ADMEncoder, dict]:
    """(feature extractor, head, meta) of a file written by `save_discriminator`, checked part by part."""
    checked_dict(obj, what, ("head",))
    rec = checked_dict(obj["head"], f"{what}: head", ("init_kwargs", "state_dict"))
    head = _build_encoder(rec["init_kwargs"], rec["state_dict"], f"{what}: head")
    meta = _plain_meta(obj, what)
    if "feature_extractor" in obj and feature_extractor is None:
        rec = checked_dict(obj["feature_extractor"], f"{what}: feature_extractor", ("init_kwargs", "state_dict"))
        return _build_encoder(rec["init_kwargs"], rec["state_dict"], f"{what}: feature_extractor"), head, meta
    ext_path = feature_extractor or obj.get("feature_extractor_path")
    if ext_path is None:
        raise UserError(f"{what} names no feature extractor; pass --feature-extractor")
    if not isinstance(ext_path, (str, os.PathLike)):
        raise UserError(f"{what}: feature_extractor_path is a {type(ext_path).__name__}, not a path")
    kw = obj.get("feature_extractor_kwargs")
    kw = {} if kw is None else checked_dict(kw, f"{what}: feature_extractor_kwargs")
    for key in ("image_size", "in_channels"):
        if kw.get(key) is not None and not (is_int(kw[key]) and kw[key] > 0):
            raise UserError(one_line(f"{what}: feature_extractor_kwargs has {key} {brief(kw[key], 60)}, "
                                     f"not a positive whole number"))
    ext = load_feature_extractor(ext_path, image_size or kw.get("image_size"), in_channels or kw.get("in_channels"))
    meta["feature_extractor_path"] = str(ext_path)
    return ext, head, meta


def _dg_head(obj: dict, what: str) -> ADMEncoder:
    """DG's released head (a bare state dict) in DG's configuration, read off its weights."""
    w = _input_weight(obj, what)
    depth = len({k.split(".")[1] for k in obj if k.startswith("input_blocks.")}) - 1
    cond = "label_emb.weight" in obj
    kw = dg_discriminator_kwargs(int(w.shape[1]), cond, width=int(w.shape[0]), depth=depth)
    if cond:
        if obj["label_emb.weight"].ndim != 2:
            raise UserError(f"{what}: label_emb.weight has shape {list(obj['label_emb.weight'].shape)}, "
                            f"not an embedding's 2 dimensions")
        kw["num_class"] = int(obj["label_emb.weight"].shape[0])
    return _build_encoder(kw, obj, what)


def load_discriminator(path: str | os.PathLike, feature_extractor: str | os.PathLike | None = None,
                       image_size: int | None = None, in_channels: int | None = None,
                       device: str | torch.device = "cpu") -> tuple[GuidedDiscriminator, dict]:
    """Rebuild a discriminator (eval mode, no parameter gradients); returns (disc, meta).

    Accepts our files (`save_discriminator`) and DG's released heads (`discriminator_60.pt`, bare
    state dicts; a `label_emb` makes them conditional), which need `feature_extractor` (DG's ADM
    classifier). `feature_extractor` also overrides the path stored in our files.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"discriminator {path} does not exist (DG's released heads: "
                        + ", ".join(f"{k} at {v}" for k, v in DG_DISCRIMINATOR_URLS.items()) + ")")
    obj = read_torch_file(path, "discriminator")
    what = f"discriminator {path}"
    if isinstance(obj, dict) and obj.get("format") == DISCRIMINATOR_FORMAT:
        ext, head, meta = _our_discriminator(obj, what, feature_extractor, image_size, in_channels)
    elif _is_bare_state_dict(obj):
        _input_weight(obj, what)
        if feature_extractor is None:
            raise UserError(f"{what} is a bare DG discriminator head; pass its ADM classifier with --feature-extractor "
                            f"(DG publishes 32x32_classifier.pt at {DG_CLASSIFIER_URL})")
        head = _dg_head(obj, what)
        ext = load_feature_extractor(feature_extractor, image_size, in_channels)
        meta = {"source": f"dg:{path}", "feature_extractor_path": str(feature_extractor), "cond": bool(head.condition)}
    else:
        raise UserError(f"{what} is neither an aot discriminator file nor a DG discriminator state dict")
    if ext.feature_channels != head.in_channels or ext.feature_resolution != head.image_size:
        raise UserError(f"{what}: the head expects {head.in_channels} feature channels of {head.image_size}x"
                        f"{head.image_size}, the feature extractor gives {ext.feature_channels} of "
                        f"{ext.feature_resolution}x{ext.feature_resolution}")
    disc = GuidedDiscriminator(ext, head).to(device).eval().requires_grad_(False)
    return disc, meta


def import_discriminator(path: str | os.PathLike, out: str | os.PathLike, *,
                         feature_extractor: str | os.PathLike | None = None, image_size: int | None = None,
                         aot: bool = False, cond: bool = False) -> dict:
    """A given discriminator file as the discriminator of a model, instead of training one; returns its meta.

    DG's released heads (`discriminator_60.pt`, `discriminator_250.pt`: bare state dicts in DG's
    layout) are read with DG's ADM classifier `feature_extractor` for `image_size` images and written
    in our format (`save_discriminator`, the classifier by its resolved path, `aot` as given: how the
    head was trained). Our own files (`aot dg train`) are checked and copied byte for byte. The head
    must be conditional exactly when `cond` (the model is), and an own file's `aot` must be the given one.
    """
    from ..files import sha256_file

    path, out = Path(path), Path(out)
    if path.is_file():
        obj = read_torch_file(path, "discriminator")
        ours = isinstance(obj, dict) and obj.get("format") == DISCRIMINATOR_FORMAT
        del obj
    else:
        ours = False  # load_discriminator names where DG's heads are published
    disc, meta = load_discriminator(path, None if ours else feature_extractor, image_size)
    what = f"discriminator {path}"
    if disc.condition != bool(cond):
        kind = {True: "class-conditional", False: "unconditional"}
        raise UserError(f"{what} is {kind[disc.condition]}, the model is {kind[bool(cond)]}")
    digest = sha256_file(path)
    if not ours:
        extractor = Path(feature_extractor).resolve()  # jobs may run in another folder
        meta = {"kind": "dg-discriminator", "source": f"dg:{path}", "sha256": digest, "aot": bool(aot),
                "cond": bool(cond), "train_seeds": None}
        save_discriminator(out, disc, str(extractor), **meta)
        return {"out": str(out), "feature_extractor_path": str(extractor), **meta}
    if "aot" in meta and bool(meta["aot"]) != bool(aot):
        raise UserError(f"{what} was trained with{'' if meta['aot'] else 'out'} AOT noise but is given as the "
                        f"{'aot' if aot else 'plain'} discriminator")
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(path.read_bytes())
    return {"out": str(out), "source": str(path), "sha256": digest, **meta}
