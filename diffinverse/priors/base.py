"""The prior interface: a denoiser ``D(x, sigma) = E[x0 | x0 + sigma * n = x]``.

The variance-exploding (VE) form is the package's single internal convention: a noisy image is
``x = x0 + sigma * n`` with ``n ~ N(0, I)`` and ``sigma`` in the units of the data. By Tweedie's
formula the MMSE denoiser and the score of the noisy density are tied by
``score(x, sigma) = grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma**2``.

A :class:`Prior` is a ``deepinv.models.Denoiser``, so it can be handed to deepinv's samplers and
iterative algorithms unchanged. Two wrappers bring other denoisers to this convention:
:class:`VPDenoiser` for variance-preserving (DDPM) networks ``f(x_t, t)`` and
:class:`RangeAdapter` for denoisers trained on another intensity range (deepinv's are on [0, 1]).

References:
    Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", ICLR 2022 (v).
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from deepinv.models import Denoiser

__all__ = ["Prior", "RangeAdapter", "VPDenoiser", "as_sigma", "checked_sigma", "sigma_like"]


def as_sigma(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return ``sigma`` as a ``(B,)`` tensor on ``x``'s device and dtype.

    Args:
        sigma: a float, a 0-d tensor, or a ``(B,)`` tensor (one noise level per batch item).
        x: the batch ``(B, ...)`` the noise levels belong to.

    Raises:
        ValueError: if ``sigma`` has the wrong shape, or is negative or non-finite.
    """
    if isinstance(sigma, (int, float)):
        # checked on the host and filled on the device: no host-to-device copy and no
        # synchronisation with a GPU (the samplers pass a float at every network call)
        return torch.full((x.shape[0],), checked_sigma(sigma), dtype=x.dtype, device=x.device)
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    elif s.ndim != 1 or s.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must be a float or a ({x.shape[0]},) tensor, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("sigma must be finite and non-negative")
    return s


def checked_sigma(sigma: float) -> float:
    """``sigma`` as a float, checked on the host.

    Raises:
        ValueError: if ``sigma`` is negative or non-finite.
    """
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and non-negative, got {sigma}")
    return float(sigma)


def sigma_like(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(B,)`` sigma to ``(B, 1, ..., 1)`` so it broadcasts against ``x``."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class Prior(Denoiser):
    """Base class of all priors: an MMSE denoiser in VE form.

    Subclasses implement :meth:`denoise` on a validated ``(B,)`` sigma tensor.

    Attributes:
        channels: number of image channels (1 real, 2 for complex images as real/imag).
        sigma_min: smallest noise level the prior was trained for (data units).
        sigma_max: largest noise level; samplers start from pure noise at this level.
        data_range: ``(low, high)`` range of the training images, e.g. ``(-1.0, 1.0)``;
            code feeding real data scales into it (see each prior's model card).
    """

    channels: int = 1
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    data_range: tuple[float, float] = (-1.0, 1.0)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Tweedie mean for ``x: (B, C, ...)`` and ``sigma: (B,)``; implemented by subclasses."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``E[x0 | x0 + sigma n = x]``.

        Args:
            x: noisy images ``(B, C, H, W)`` (or ``(B, C, D, H, W)`` where a prior supports it).
            sigma: noise standard deviation, a float or a ``(B,)`` tensor, in data units.

        Returns:
            The denoised estimate, same shape as ``x``.
        """
        self.check_input(x)
        return self.denoise(x, as_sigma(sigma, x))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, channels, ...)`` (a host-side shape check)."""
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.channels} channel(s) in dim 1, got shape {tuple(x.shape)}")

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma**2``, same shape as ``x``."""
        s = sigma_like(as_sigma(sigma, x), x)
        return (self(x, sigma) - x) / s**2


class VPDenoiser(Prior):
    """A VE prior from a variance-preserving network ``f(x_t, t)`` (eps-, x0- or v-prediction).

    A VP model sees ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; dividing by
    ``sqrt(abar_t)`` gives the VE form ``x = x0 + sigma_t eps`` with
    ``sigma_t = sqrt((1 - abar_t) / abar_t)``. Given a VE ``x`` and ``sigma``, this wrapper feeds
    ``x_t = x / sqrt(1 + sigma^2)`` (i.e. ``abar = 1 / (1 + sigma^2)``, exact for every sigma) at
    the timestep ``t`` whose ``sigma_t`` matches ``sigma``, and converts the prediction to ``x0``:

    - ``"eps"``: ``x0 = x - sigma * eps``;
    - ``"x0"``: the output is ``x0``;
    - ``"v"`` (``v = sqrt(abar) eps - sqrt(1 - abar) x0``): ``x0 = sqrt(abar) x_t - sqrt(1 - abar) v``.

    Timesteps: with ``timesteps="continuous"`` (default) ``t`` is interpolated linearly in
    ``log sigma`` between the two neighbouring training steps, a fractional ``t`` (sinusoidal
    timestep embeddings accept it); with ``"nearest"`` the training step with the closest
    ``log sigma`` is used, as the network saw in training. Sigmas outside the training range are
    clamped to its ends for the choice of ``t`` only (the scaling stays exact). A network output
    with ``2 * channels`` channels (learned variance, as in guided-diffusion) is cut to its
    first ``channels``.

    Args:
        network: a module ``f(x_t: (B, C, H, W), t: (B,) float) -> (B, C or 2C, H, W)``.
        alphas_cumprod: ``(T,)`` cumulative products ``abar_t`` of the training schedule, decreasing.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        channels: image channels ``C``.
        data_range: ``(low, high)`` of the network's training images (DDPM convention: [-1, 1]).
        timesteps: ``"continuous"`` or ``"nearest"`` (see above).

    Attributes:
        sigma_min, sigma_max: ``sigma_t`` at the first and last training step.

    References:
        Ho et al., NeurIPS 2020; Salimans & Ho, ICLR 2022; Karras et al., NeurIPS 2022 (App. C.3.4).
    """

    def __init__(self, network: torch.nn.Module | Callable, alphas_cumprod: torch.Tensor, *,
                 prediction: str = "eps", channels: int, data_range: tuple[float, float] = (-1.0, 1.0),
                 timesteps: str = "continuous"):
        super().__init__()
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f'prediction must be "eps", "x0" or "v", got {prediction!r}')
        if timesteps not in ("continuous", "nearest"):
            raise ValueError(f'timesteps must be "continuous" or "nearest", got {timesteps!r}')
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 2 or not ((abar > 0) & (abar < 1)).all() or (abar[1:] >= abar[:-1]).any():
            raise ValueError("alphas_cumprod must be a (T,) tensor, T >= 2, strictly decreasing in (0, 1)")
        self.network = network
        self.prediction = prediction
        self.timesteps = timesteps
        self.channels = int(channels)
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.register_buffer("log_sigmas", 0.5 * ((1 - abar) / abar).log())
        self.sigma_min = float(self.log_sigmas[0].exp())
        self.sigma_max = float(self.log_sigmas[-1].exp())

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Training timestep ``(B,)`` (float64; integer-valued for ``"nearest"``) for VE ``sigma: (B,)``."""
        log_s = self.log_sigmas
        ls = sigma.to(torch.float64).clamp(log_s[0].exp(), log_s[-1].exp()).log()
        if self.timesteps == "nearest":
            return (ls[:, None] - log_s[None]).abs().argmin(dim=1).to(torch.float64)
        hi = torch.searchsorted(log_s, ls).clamp(1, log_s.numel() - 1)
        frac = (ls - log_s[hi - 1]) / (log_s[hi] - log_s[hi - 1])
        return (hi - 1).to(torch.float64) + frac.clamp(0, 1)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma_like(sigma, x)
        a = (1 + s**2).rsqrt()                      # sqrt(abar)
        x_t = a * x
        out = self.network(x_t, self.sigma_to_t(sigma).to(x.dtype))
        if out.shape[1] == 2 * self.channels:
            out = out[:, : self.channels]
        if out.shape != x.shape:
            raise ValueError(f"network returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        if self.prediction == "eps":
            return x - s * out
        if self.prediction == "x0":
            return out
        return a * x_t - (s * a) * out              # sqrt(1 - abar) = sigma * sqrt(abar)


class RangeAdapter(Prior):
    """A prior on images in ``data_range`` from a denoiser trained on ``denoiser_range``.

    Tweedie means commute with affine maps: with ``u = lo' + a (x - lo)`` and
    ``a = (hi' - lo') / (hi - lo)``, ``D(x, sigma) = lo + (D'(u, a sigma) - lo') / a``, exactly.
    Typical use: a deepinv denoiser (``DRUNet``, ``NCSNpp``, ... on [0, 1]) as a prior on
    complex MR images scaled to [-1, 1].

    Args:
        denoiser: any ``deepinv.models.Denoiser`` (or callable ``D'(x, sigma: (B,))``).
        data_range: ``(lo, hi)`` of the images this prior is for.
        denoiser_range: ``(lo', hi')`` of the images the denoiser was trained on.
        channels: image channels; default: the denoiser's ``channels`` attribute.
        sigma_min, sigma_max: noise range in units of ``data_range``; default: the denoiser's
            own (converted), else 0.002 and 80 denoiser units converted.
    """

    def __init__(self, denoiser: torch.nn.Module | Callable, *, data_range: tuple[float, float],
                 denoiser_range: tuple[float, float] = (0.0, 1.0), channels: int | None = None,
                 sigma_min: float | None = None, sigma_max: float | None = None):
        super().__init__()
        lo, hi = float(data_range[0]), float(data_range[1])
        dlo, dhi = float(denoiser_range[0]), float(denoiser_range[1])
        if not (hi > lo and dhi > dlo):
            raise ValueError(f"ranges must be (low, high) with high > low, got {data_range} and {denoiser_range}")
        channels = getattr(denoiser, "channels", None) if channels is None else channels
        if channels is None:
            raise ValueError("channels must be given for a denoiser without a channels attribute")
        self.denoiser = denoiser
        self.channels = int(channels)
        self.data_range = (lo, hi)
        self.denoiser_range = (dlo, dhi)
        self.scale = (dhi - dlo) / (hi - lo)
        self.sigma_min = (float(sigma_min) if sigma_min is not None
                          else getattr(denoiser, "sigma_min", Prior.sigma_min) / self.scale)
        self.sigma_max = (float(sigma_max) if sigma_max is not None
                          else getattr(denoiser, "sigma_max", Prior.sigma_max) / self.scale)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        (lo, _), (dlo, _), a = self.data_range, self.denoiser_range, self.scale
        u = dlo + a * (x - lo)
        return lo + (self.denoiser(u, a * sigma) - dlo) / a
