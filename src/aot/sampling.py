"""EDM's deterministic and stochastic samplers (Karras et al. 2022, Algorithm 2), step for step.

`edm_sampler` performs the same float64 operations in the same order as NVlabs/edm's
`generate.py`, so given the same network, latents and `randn_like` it returns the same tensor.
`euler_sampler` is its first-order variant (one network evaluation per step). `denoised_trajectory`
runs either and also records every state x_i and the single-step denoised estimate
x0_i = D(x_hat_i, t_hat_i) that the paper's trajectory figures show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .keys import SOLVERS, nfe, sampler_key  # noqa: F401  (the sampler vocabulary lives in keys)


def _check_settings(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> None:
    if int(num_steps) != num_steps or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps}")
    if not sigma_min > 0:
        raise ValueError(f"sigma_min must be positive, got {sigma_min}")
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max ({sigma_max}) must exceed sigma_min ({sigma_min})")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")


def edm_time_steps(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80, rho: float = 7,
                   net: torch.nn.Module | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """EDM's noise levels t_0 > ... > t_{N-1} followed by t_N = 0 (float64, length N + 1).

    t_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho. With `net`,
    the range is first clipped to the network's [sigma_min, sigma_max] and the levels are passed
    through `net.round_sigma`, as EDM's sampler does.
    """
    if net is not None:
        sigma_min = max(sigma_min, net.sigma_min)
        sigma_max = min(sigma_max, net.sigma_max)
    _check_settings(num_steps, sigma_min, sigma_max, rho)
    step_indices = torch.arange(num_steps, dtype=torch.float64, device=device)
    t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1)
               * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_rounded = torch.as_tensor(net.round_sigma(t_steps)) if net is not None else t_steps
    return torch.cat([t_rounded, torch.zeros_like(t_steps[:1])])  # t_N = 0


def sample(net: torch.nn.Module, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
           randn_like: Callable = torch.randn_like, num_steps: int = 18, sigma_min: float = 0.002,
           sigma_max: float = 80, rho: float = 7, S_churn: float = 0, S_min: float = 0,
           S_max: float = float("inf"), S_noise: float = 1, solver: str = "heun",
           record: dict | None = None) -> torch.Tensor:  # EDM port
    """EDM's sampler loop (Algorithm 2 of EDM) with a Heun or Euler step; the settings and their
    defaults are EDM's. With `record`, every step's state and denoised estimate is kept there."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")
    t_steps = edm_time_steps(num_steps, sigma_min, sigma_max, rho, net=net, device=latents.device)

    x_next = latents.to(torch.float64) * t_steps[0]
    if record is not None:
        record["t_steps"] = t_steps
        record["x"] = [x_next]
        record["x0"] = []
        record["t_hat"] = []
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):  # 0, ..., N-1
        x_cur = x_next

        # Increase noise temporarily. With S_churn = 0 the added noise is exactly zero, so drawing
        # it can be skipped without changing a bit (and nothing else consumes the generator).
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        if S_churn == 0:
            x_hat = x_cur
        else:
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)

        # Euler step.
        denoised = net(x_hat, t_hat, class_labels).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if record is not None:
            record["x0"].append(denoised)
            record["t_hat"].append(torch.as_tensor(t_hat, dtype=torch.float64))

        # Second-order correction (Heun), except on the last step towards t_N = 0.
        if solver == "heun" and i < num_steps - 1:
            denoised = net(x_next, t_next, class_labels).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if record is not None:
            record["x"].append(x_next)
    return x_next


def edm_sampler(net: torch.nn.Module, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
                randn_like: Callable = torch.randn_like, **settings: float) -> torch.Tensor:
    """EDM's Heun sampler; returns the final float64 images (about [-1, 1]). Settings as `sample`."""
    return sample(net, latents, class_labels, randn_like, solver="heun", **settings)


def euler_sampler(net: torch.nn.Module, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
                  randn_like: Callable = torch.randn_like, **settings: float) -> torch.Tensor:
    """First-order (Euler) variant of `edm_sampler` on the same time steps; NFE = num_steps."""
    return sample(net, latents, class_labels, randn_like, solver="euler", **settings)


SAMPLER_FNS: dict[str, Callable[..., torch.Tensor]] = {"heun": edm_sampler, "euler": euler_sampler}


def get_sampler(solver: str) -> Callable[..., torch.Tensor]:
    try:
        return SAMPLER_FNS[solver]
    except KeyError:
        raise ValueError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})") from None


def denoised_trajectory(net: torch.nn.Module, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
                        randn_like: Callable = torch.randn_like, **settings: Any) -> dict[str, Any]:
    """Run the sampler (settings as `sample`, solver included) and keep every step.

    Returns a dict of float64 tensors:
      `t_steps` [K+1]            the noise levels, ending with 0 (K = num_steps);
      `t_hat`   [K]              the level at which the network was evaluated at each step
                                 (t_i unless S_churn > 0);
      `x`       [N, K+1, C, H, W] the sampler states: x[:, 0] = latents * t_0, x[:, K] = the sample
                                 (equal to what `edm_sampler`/`euler_sampler` returns);
      `x0`      [N, K, C, H, W]   the single-step denoised estimate D(x_hat_i, t_hat_i) at each step.
    """
    record: dict[str, Any] = {}
    sample(net, latents, class_labels, randn_like, record=record, **settings)
    return {
        "t_steps": record["t_steps"],
        "t_hat": torch.stack(record["t_hat"]),
        "x": torch.stack(record["x"], dim=1),
        "x0": torch.stack(record["x0"], dim=1),
    }


class StackedRandomGenerator:
    """One torch generator per seed (seed mod 2^32), as EDM's generate.py: sample n of a batch is
    drawn from its own seed's stream, so it does not depend on the batch it is in."""

    def __init__(self, device: torch.device | str, seeds) -> None:
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def randn(self, size, **kwargs) -> torch.Tensor:
        assert size[0] == len(self.generators)
        return torch.stack([torch.randn(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randn_like(self, input: torch.Tensor) -> torch.Tensor:
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args, size, **kwargs) -> torch.Tensor:
        assert size[0] == len(self.generators)
        return torch.stack([torch.randint(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])


class _BF16Autocast(torch.nn.Module):
    """Runs the wrapped U-Net under bf16 autocast and returns float32, as the preconditioner expects."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, *args, **kwargs):
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return self.inner(x, *args, **kwargs).to(torch.float32)


class FastDenoiser(torch.nn.Module):
    """Sampling-only speed settings around a preconditioned network: the U-Net inside it under bf16
    autocast (the preconditioning stays float32), channels_last memory format and, optionally,
    `torch.compile` (on CUDA with mode "max-autotune", which also captures CUDA graphs). Outputs are
    float32 but not bit-identical to fp32 sampling; EDM's faithful configuration is the plain network."""

    def __init__(self, net: torch.nn.Module, compile: bool = False) -> None:
        super().__init__()
        import copy

        net = copy.deepcopy(net).to(memory_format=torch.channels_last)
        net.model = _BF16Autocast(net.model)
        self.net = net
        for name in ("sigma_min", "sigma_max", "sigma_data", "img_resolution", "img_channels", "label_dim"):
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))
        self.compiled = bool(compile)
        device_type = next(net.parameters()).device.type
        self.fn = torch.compile(net, mode="max-autotune" if device_type == "cuda" else None) if compile else net

    def round_sigma(self, sigma):
        return self.net.round_sigma(sigma)

    def forward(self, x, sigma, class_labels=None, **kwargs):
        x = x.to(torch.float32).contiguous(memory_format=torch.channels_last)
        return self.fn(x, sigma, class_labels, **kwargs)
