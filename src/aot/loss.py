"""EDM's training loss on (augmented image, paired unit noise, sigma).

EDM draws the noise inside the loss; AOT pairs the noise with the images before the loss sees them,
so here the unit noise `n` is an input. With independent `n` this is exactly EDM's `EDMLoss`:
sigma ~ exp(N(P_mean, P_std^2)), weight (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2,
loss = weight * (D(y + sigma * n, sigma) - y)^2, per element.
"""

from __future__ import annotations

import torch


class EDMLoss:
    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5) -> None:
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def sample_sigma(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        rnd_normal = torch.randn([batch, 1, 1, 1], device=device, generator=generator)
        return (rnd_normal * self.P_std + self.P_mean).exp()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def __call__(self, net, y: torch.Tensor, n: torch.Tensor, labels: torch.Tensor | None = None,
                 augment_labels: torch.Tensor | None = None, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Per-element weighted loss for images `y` (augmented, in [-1, 1]) and unit noise `n`."""
        if n.shape != y.shape:
            raise ValueError(f"noise shape {tuple(n.shape)} does not match images {tuple(y.shape)}")
        if sigma is None:
            sigma = self.sample_sigma(y.shape[0], y.device)
        D_yn = net(y + n * sigma, sigma, labels, augment_labels=augment_labels)
        return self.weight(sigma) * ((D_yn - y) ** 2)
