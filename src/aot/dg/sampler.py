"""Sampling with Discriminator Guidance: DG's EDM-G++ sampler and guided sample sets.

`dg_sampler` is EDM's Heun sampler with DG's correction: the gradient of the log density ratio
log(d / (1 - d)) of the discriminator, evaluated at the VP time that matches the EDM noise level,
is added to the ODE direction, only inside [time_min, time_max], with DG's optional "boosting".
With zero weights it is EDM's sampler exactly. `generate` writes a guided sample set through
aot.generate's seed-deterministic, resumable shards; its key is `dg{aot|plain}-heun-n18-rho7`.
With several output files it writes several sets (the seeds split into equal, consecutive parts)
from one loading of the network and the discriminator, as `aot.generate.generate_set` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from ..keys import sampler_key
from ..runtime import Preemption
from ..sampling import edm_time_steps
from .discriminator import (
    PROB_EPS,
    GuidedDiscriminator,
    load_discriminator,
    vp_cosine_time,
    vp_marginal,
    vp_time_from_sigma,
)

# DG's boosting constants (generate.py): churn for low log-ratio samples every `period` steps,
# and doubled guidance for them every `period_weight` steps.
BOOST_S_CHURN = 4.0
BOOST_S_NOISE = 1.0
BOOST_PERIOD = 5
BOOST_PERIOD_WEIGHT = 2


def grad_log_ratio(discriminator: Callable, x: torch.Tensor, sigma: torch.Tensor | float,
                   class_labels: torch.Tensor | None = None, time_min: float = 0.01, time_max: float = 1.0,
                   cosine_time: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """DG's correction term at EDM state (x, sigma): (guidance [like x], log_ratio [N]).

    sigma is mapped to VP time tau, the discriminator sees mean_vp(tau) * x at time tau, and the
    gradient of the log density ratio with respect to its input is scaled by -sigma^2 * mean_vp(tau);
    the sampler adds `weight * guidance / sigma` to its ODE direction. Outside [time_min, time_max]
    (judged by the smallest tau in the batch, as DG does) the guidance is zero and the log ratio is
    reported as 1e7. The discriminator runs in float32 with per-sample float32 times, as in DG.
    """
    n = x.shape[0]
    sigma32 = torch.ones(n, device=x.device) * torch.as_tensor(sigma, device=x.device).float()
    tau = vp_time_from_sigma(sigma32)
    mean, _ = vp_marginal(tau)
    if tau.min() > time_max or tau.min() < time_min:
        return torch.zeros_like(x), torch.full((n,), 1e7, device=x.device)
    inp = (mean[:, None, None, None] * x).float().detach().requires_grad_(True)
    if cosine_time:
        tau = vp_cosine_time(tau)
    with torch.enable_grad():
        if isinstance(discriminator, GuidedDiscriminator):
            log_ratio = discriminator.log_ratio(inp, tau, class_labels)
        else:
            p = torch.clip(discriminator(inp, tau, class_labels), PROB_EPS, 1.0 - PROB_EPS)
            log_ratio = torch.log(p / (1.0 - p))
        grad = torch.autograd.grad(log_ratio.sum(), inp)[0]
    guidance = grad * -((sigma32 ** 2) * mean)[:, None, None, None]
    return guidance, log_ratio.detach()


# ------------------------------------------------------------------------------------------------
# EDM-G++ sampler


def dg_sampler(  # EDM port
               net: nn.Module, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
               discriminator: Callable | None = None, num_steps: int = 18, rho: float = 7,
               dg_weight_1st_order: float = 2.0, dg_weight_2nd_order: float = 0.0, time_min: float = 0.01,
               time_max: float = 1.0, boosting: bool = False, randn_like: Callable = torch.randn_like,
               sigma_min: float = 0.002, sigma_max: float = 80, S_churn: float = 0, S_min: float = 0,
               S_max: float = float("inf"), S_noise: float = 1, cosine_time: bool | None = None) -> torch.Tensor:
    """EDM's Heun sampler with Discriminator Guidance, step for step as DG's `generate.py`.

    With both weights zero (and no boosting) this is `aot.sampling.edm_sampler` exactly (same time
    steps, same calls to `randn_like`, float64 state). The guidance of the first (Euler) evaluation
    is weighted by `dg_weight_1st_order`, that of the second (Heun correction) evaluation by
    `dg_weight_2nd_order` (DG's own code fails when the latter is non-zero; here it works).
    Boosting (DG): every 5th step, samples whose last log ratio was negative get S_churn = 4; every
    2nd step their guidance is doubled. Returns float64 images in [-1, 1] (unclipped).
    """
    w1, w2 = float(dg_weight_1st_order), float(dg_weight_2nd_order)
    if (w1 != 0 or w2 != 0) and discriminator is None:
        raise ValueError("dg_sampler: a non-zero guidance weight needs a discriminator")
    if cosine_time is None:
        cosine_time = getattr(net, "img_resolution", None) == 64
    n = latents.shape[0]
    device = latents.device
    t_steps = edm_time_steps(num_steps, sigma_min, sigma_max, rho, net=net).to(device)
    gamma_max = np.sqrt(2) - 1
    log_ratio = torch.full((n,), float("inf"), device=device)

    def guidance(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad_log_ratio(discriminator, x, sigma, class_labels, time_min, time_max, cosine_time)

    # DG draws churn noise on every step; it only matters (and is only drawn here) when some step
    # can add noise, i.e. with S_churn > 0 or boosting.
    draw_noise = bool(S_churn) or bool(boosting)
    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        churn = torch.full((n,), float(S_churn), dtype=torch.float64, device=device)
        noise = torch.full((n,), float(S_noise), dtype=torch.float64, device=device)
        if boosting and i % BOOST_PERIOD == 0:
            low = log_ratio < 0
            churn[low] = BOOST_S_CHURN
            noise[low] = BOOST_S_NOISE
        in_range = S_min <= t_cur <= S_max
        if bool((churn == churn[0]).all()) and bool((noise == noise[0]).all()):
            # One noise level for the whole batch: EDM's own arithmetic.
            c, s_noise = float(churn[0]), float(noise[0])
            gamma = min(c / num_steps, gamma_max) if in_range else 0
            t_hat = net.round_sigma(t_cur + gamma * t_cur)
            if draw_noise:
                x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * s_noise * randn_like(x_cur)
            else:  # the added noise would be exactly zero (aot.sampling skips the draw too)
                x_hat = x_cur
            t_hat_b = t_hat
        else:
            gamma_vec = torch.clamp(churn / num_steps, max=gamma_max) if in_range else torch.zeros_like(churn)
            t_hat = net.round_sigma(t_cur + gamma_vec * t_cur).to(torch.float64)
            t_hat_b = t_hat[:, None, None, None]
            x_hat = x_cur + ((t_hat ** 2 - t_cur ** 2).sqrt() * noise)[:, None, None, None] * randn_like(x_cur)

        # Euler step, with DG's first-order correction.
        denoised = net(x_hat, t_hat, class_labels).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat_b
        if w1 != 0:
            g, log_ratio = guidance(x_hat, t_hat)
            if boosting and i % BOOST_PERIOD_WEIGHT == 0:
                g[log_ratio < 0] *= 2.0
            sigma32 = (torch.ones(n, device=device) * t_hat.float())[:, None, None, None]
            d_cur = d_cur + w1 * (g / sigma32)
        x_next = x_hat + (t_next - t_hat_b) * d_cur

        # Second-order correction, with DG's second-order correction.
        if i < num_steps - 1:
            denoised = net(x_next, t_next, class_labels).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            if w2 != 0:
                g, _ = guidance(x_next, t_next)
                d_prime = d_prime + w2 * (g / t_next.float())
            x_next = x_hat + (t_next - t_hat_b) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


# ------------------------------------------------------------------------------------------------
# Guided sample sets


def load_guided_models(network: str | os.PathLike, discriminator: str | os.PathLike,
                       feature_extractor: str | os.PathLike | None,
                       class_labels: str | int) -> tuple[nn.Module, dict, GuidedDiscriminator, dict]:
    """The network and a discriminator made for its images, on the CPU: (net, its meta, disc, its meta)."""
    from ..checkpoints import load_any_network
    from ..generate import check_class_labels

    net, ckpt_meta = load_any_network(network, device="cpu")
    check_class_labels(net, class_labels, what=f"network {network}")
    disc, disc_meta = load_discriminator(discriminator, feature_extractor, int(net.img_resolution),
                                         int(net.img_channels))
    if disc.condition and not int(getattr(net, "label_dim", 0) or 0):
        raise UserError(f"discriminator {discriminator} is class-conditional but network {network} is not")
    ext = disc.feature_extractor
    if ext.image_size != int(net.img_resolution) or ext.in_channels != int(net.img_channels):
        raise UserError(f"discriminator {discriminator} is for {ext.in_channels}x{ext.image_size}x{ext.image_size} "
                        f"images, network {network} makes {net.img_channels}x{net.img_resolution}x"
                        f"{net.img_resolution}")
    return net, ckpt_meta, disc, disc_meta


DISCRIMINATOR_TRAINING_KEYS = ("batch", "epoch", "lr", "weight_decay", "pool_size", "source")


def discriminator_training(meta: dict) -> dict:
    """What a guided set records of its discriminator's training (Table 3's notes read it): batch,
    epochs, learning rate, weight decay and AOT pool (None without AOT) of one trained here, the
    source of an imported one (DG's released heads: `dg:<path>`)."""
    return {k: meta[k] for k in DISCRIMINATOR_TRAINING_KEYS if k in meta}


def generate(*, network: str | os.PathLike, discriminator: str | os.PathLike,
             feature_extractor: str | os.PathLike | None = None,  # ADM classifier for DG's bare heads
             dg_weight_1st_order: float = 2.0,  # guidance weight of the Euler step
             dg_weight_2nd_order: float = 0.0,  # guidance weight of the Heun correction
             time_min: float = 0.01,            # guidance only at VP times in [time_min, time_max]
             time_max: float = 1.0,
             boosting: bool = False,            # DG's boosting of low log-ratio samples
             keep_shards: bool = False,         # keep shard folders (the sets are measured next)
             before_sets: Callable[[], None] | None = None,  # before the first set
             after_set: Callable[[Path], None] | None = None,  # once each set is finished
             **settings: Any) -> dict | None:
    """Generate the guided sample set `settings['out']` for `settings['seeds']` from the network file
    `network` (ours, or an EDM pickle) and `discriminator` (a file of `aot.dg.train`, or DG's head);
    the sampler and output settings are those of `aot.generate.generation_request` (Heun only: DG's
    EDM-G++ has no other). Returns the set's meta; with `settings['out']` a list of files, one set
    per file from equal, consecutive parts of the seeds, and the list of their metas.

    The sampler key `dg{aot|plain}-heun-...` and `sampler.guidance` go into the meta. A SIGTERM or
    SIGUSR1 ends the job at once with EXIT_PREEMPTED; the finished shards stay for a rerun. Inside a
    Slurm job with `settings['slurm_margin']` > 0, so does reaching the job's end time minus that
    margin, before the next shard (`aot.generate.run_generation_sets`).
    """
    from ..generate import (
        SAMPLER_SETTINGS,
        generation_request,
        model_meta,
        request_result,
        request_sampler_meta,
        run_generation_sets,
        sets_note,
    )
    from ..runtime import resolve_device

    if settings.get("solver", "heun") != "heun":
        raise UserError(f"--solver {settings['solver']}: Discriminator Guidance runs EDM's Heun sampler only (heun)")
    if not time_min <= time_max:
        raise UserError(f"--time-min ({time_min}) must not exceed --time-max ({time_max})")
    req = generation_request(**settings)
    device = resolve_device(req["device"])
    net, ckpt_meta, disc, disc_meta = load_guided_models(network, discriminator, feature_extractor,
                                                         req["class_labels"])
    with Preemption(margin=req["slurm_margin"], raise_on_signal=True) as preemption:
        net, disc = net.to(device), disc.to(device)
        aot = bool(disc_meta.get("aot", False))
        guidance = {"method": "dg", "aot": aot, "discriminator": str(discriminator),
                    "dg_weight_1st_order": float(dg_weight_1st_order),
                    "dg_weight_2nd_order": float(dg_weight_2nd_order),
                    "time_min": float(time_min), "time_max": float(time_max), "boosting": bool(boosting),
                    "train_seeds": disc_meta.get("train_seeds"), "training": discriminator_training(disc_meta)}
        smeta = request_sampler_meta(req, guidance=guidance)
        smeta["key"] = sampler_key("heun", req["num_steps"], req["rho"], req["S_churn"],
                                   guidance="aot" if aot else "plain")
        meta = {"model": model_meta(network, ckpt_meta, net, name=req["model_name"]), "sampler": smeta,
                "batch": req["batch"], "shard_size": req["shard_size"], "device": str(device),
                "discriminator": {"path": str(discriminator),
                                  **{k: v for k, v in disc_meta.items() if k != "stats"}}}
        sampler_kwargs = dict(discriminator=disc, **{k: req[k] for k in SAMPLER_SETTINGS},
                              dg_weight_1st_order=dg_weight_1st_order, dg_weight_2nd_order=dg_weight_2nd_order,
                              time_min=time_min, time_max=time_max, boosting=bool(boosting))
        print(f"generating {len(req['seeds'])} images{sets_note(req)} with {smeta['key']} (NFE {smeta['nfe']}, "
              f"DG weights {dg_weight_1st_order}/{dg_weight_2nd_order}) from {network} on {device}", flush=True)
        metas = run_generation_sets(net, req["sets"], sampler_fn=dg_sampler, sampler_kwargs=sampler_kwargs,
                                    batch=req["batch"], device=device, class_labels=req["class_labels"],
                                    shard_size=req["shard_size"], meta=meta,
                                    fingerprint_extra={"discriminator": str(discriminator)}, grid=req["grid"],
                                    keep_shards=keep_shards, preemption=preemption,
                                    before_sets=before_sets, after_set=after_set)
        return request_result(req, metas)
