"""Diffusion Posterior Sampling (DPS), written on the variance-exploding denoiser ``D(x, sigma)``.

Each step (Chung et al. 2023, Algorithm 1) is an unconditional ancestral step followed by a
gradient step on the measurement residual of the denoised estimate:

    x0_hat  = D(x, sigma)                                                  (Tweedie, line 4)
    x'      = x0_hat + (sigma_next / sigma)^2 (x - x0_hat) + sigma_up n    (ancestral, lines 5-7)
    x_next  = x' - zeta * c(sigma, sigma_next) * grad_x ||y - A(x0_hat)||  (guidance, line 8)

with ``sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2``. The ancestral step is the
DDPM posterior ``q(x_{t-1} | x_t, x0_hat)`` (fixed "small" variance) rewritten in VE variables
``x_ve = x_vp / sqrt(abar)``, ``sigma^2 = (1 - abar) / abar``: the VP chain has independent VE
increments of variance ``sigma_t^2 - sigma_{t-1}^2 = beta_t / abar_t``. The official code steps
``x_vp`` by ``-zeta * grad_{x_vp}``; in VE variables that is the factor
``c = sqrt((1 + sigma^2) (1 + sigma_next^2))``, so that the same ``zeta`` gives the same sampler.

Scale: ``zeta`` is given relative to the operator's norm. With the squared norm (the default) the
step is ``zeta / ||A||^2`` (times ``c``) along ``grad ||y - A(x0_hat)||^2 = 2 J^T A^H (A x0_hat -
y)``: ``zeta = 0.5`` is the Landweber step ``A^H r / ||A||^2`` on the data term as seen from
``x0_hat`` (for a subsampling operator, the projection onto the measured data where the Jacobian is
near the identity), whatever the scale of the operator or the data; ``zeta = 1`` is the edge of
stability. With the plain
norm it is ``zeta / ||A||`` (the gradient of ``||y - A x||`` has norm at most ``||A||``).
``||A||^2`` is estimated once per call by power iteration
(:func:`~diffinverse.samplers.base.operator_scale`; 1 for a nonlinear physics). The paper's own
normalisation, ``zeta_i = zeta' / ||y - A(x0_hat)||`` on the squared norm, is the plain-norm
direction: it removes the residual's scale but not the operator's.

Differences between the paper and the official code (github.com/DPS2022/diffusion-posterior-sampling):

* The paper's Algorithm 1 steps along ``grad ||y - A(x0_hat)||^2`` with ``zeta_i = zeta' /
  ||y - A(x0_hat)||``; the code steps along the gradient of the plain norm ``||y - A(x0_hat)||``
  with a constant ``zeta`` (the same direction, a factor 2 apart): ``squared_norm=False`` here.
  Default here: the squared norm with a constant (relative) ``zeta``, a Landweber step through
  the network's Jacobian.
* The official ``zeta`` values (1.0 for inpainting / super-resolution, 0.3-1.0 for deblurring,
  1000 steps, plain norm) are for 256x256x3 images on ``[-1, 1]`` with measurement noise 0.05 and
  operators of norm about 1. The plain-norm step is in data units per unit-norm residual
  direction, so it also depends on the image size; the guidance is applied once per step, so
  fewer steps need a larger ``zeta``.
* The official code clips ``x0_hat`` to ``[-1, 1]`` (``clip_x0=True`` clips to
  ``prior.data_range``; off by default since complex MRI data has no natural box) and uses the
  network's learned variance for the ancestral noise; here the fixed DDPM posterior variance.

Works with any deepinv ``Physics``: a ``LinearPhysics`` contributes ``A_adjoint`` to the gradient,
any other physics is differentiated by autograd (only ``A`` is needed). Autograd is enabled only
around the network call whose Jacobian the guidance needs.

References:
    Chung, Kim, Mccann, Klasky & Ye, "Diffusion Posterior Sampling for General Noisy Inverse
    Problems", ICLR 2023.
    Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
"""
from __future__ import annotations

import math

import torch

from diffinverse.imaging import per_item
from diffinverse.samplers.base import DiffusionSampler, data_fidelity_grad, operator_scale

__all__ = ["DPS"]

NUM_STEPS, ZETA, SIGMA_START = 100, 0.7, 0.3
"""Defaults: steps of the full grid, the relative guidance step and the warm-start level, chosen
on the tuning images of every task of :mod:`diffinverse.tasks` (``benchmarks/samplers/tune_defaults.py``)."""


class DPS(DiffusionSampler):
    """Diffusion Posterior Sampling on a VE prior.

    Args:
        prior: the denoiser ``D(x, sigma)``.
        num_steps: steps of the full grid (one network forward and backward each).
        zeta: guidance step size, relative to ``||A||^2`` (squared norm) or ``||A||`` (plain norm).
        squared_norm: guide with ``||y - A(x0_hat)||^2`` (paper) instead of the plain norm (code).
        clip_x0: clip ``x0_hat`` to ``prior.data_range`` before the guidance and the ancestral step.
        sigma_start: warm-start level (default ``SIGMA_START``: from the Tikhonov warm start plus
            noise; ``None``: a cold start from pure noise over the whole grid).
        **kwargs: schedule, progress, callback, autocast, channels_last, compile and cuda_graph
            options of :class:`~diffinverse.samplers.base.DiffusionSampler` (a captured step holds
            the network's forward and backward pass).

    Example:
        >>> sampler = DPS(prior, progress=False)      # defaults: 100-step grid, warm start at 0.3
        >>> x = sampler(y, physics, generator=torch.Generator().manual_seed(0))
        >>> x = sampler(y, physics, x_init=fbp, sigma_start=0.1)   # from the caller's warm start

    References:
        Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse Problems", ICLR 2023.
    """

    supports_cuda_graph = True
    step_size_hint = "zeta"

    def __init__(self, prior, *, num_steps: int = NUM_STEPS, zeta: float = ZETA, squared_norm: bool = True,
                 clip_x0: bool = False, sigma_start: float | None = SIGMA_START, **kwargs):
        super().__init__(prior, num_steps=num_steps, sigma_start=sigma_start, **kwargs)
        if not (math.isfinite(zeta) and zeta >= 0):
            raise ValueError(f"zeta must be finite and >= 0, got {zeta}")
        self.zeta = float(zeta)
        self.squared_norm = squared_norm
        self.clip_x0 = clip_x0

    def __call__(self, y, physics, **kwargs):
        if torch.is_inference_mode_enabled():
            raise RuntimeError("DPS differentiates through the network: do not call it under torch.inference_mode()")
        return super().__call__(y, physics, **kwargs)

    __call__.__doc__ = DiffusionSampler.__call__.__doc__

    def draws_noise(self, sigma, sigma_next):
        return sigma_next > 0

    def init_state(self, x, y, physics):
        # zeta relative to ||A||^2 (squared norm) or ||A|| (plain norm): a 0-d tensor on the state's
        # device, which a captured step reads from its buffer
        scale = operator_scale(physics, x)
        zeta = self.zeta / (scale if self.squared_norm else math.sqrt(scale))
        return {"zeta": torch.tensor(zeta, dtype=torch.float32 if x.device.type == "mps" else torch.float64,
                                     device=x.device)}

    def step(self, x, sigma, sigma_next, noise, y, physics, state):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            # line 4: x0_hat = D(x_i, sigma_i), keeping the graph for the guidance's Jacobian
            x0_hat = self.denoise(x, sigma)
            if self.clip_x0:
                x0_hat = x0_hat.clamp(*self.prior.data_range)
            # line 8: grad_x ||y - A(x0_hat)|| = J_D^T grad_{x0_hat}, one norm per batch item
            grad_x0, residual = data_fidelity_grad(x0_hat, y, physics)
            if self.squared_norm:
                grad_x0 = 2 * grad_x0
            else:
                norms = residual.flatten(1).norm(dim=1).clamp_min(torch.finfo(residual.dtype).tiny)
                grad_x0 = grad_x0 / per_item(norms, grad_x0)
            (grad,) = torch.autograd.grad(x0_hat, x, grad_outputs=grad_x0)
        x, x0_hat = x.detach(), x0_hat.detach()
        # lines 5-7: the DDPM ancestral step in VE form, mean x0_hat + (sigma_next / sigma)^2 (x - x0_hat),
        # plus sigma_up n (no noise at the last step, where sigma_next = 0 and so sigma_up = 0)
        sigma_up = sigma_next * (sigma**2 - sigma_next**2).sqrt() / sigma
        x_next = torch.lerp(x0_hat, x, ((sigma_next / sigma) ** 2).to(x.dtype))
        if noise is not None:
            x_next.addcmul_(noise, sigma_up.to(x.dtype))
        # line 8: the guidance step, zeta scaled from the official code's VP state to VE units
        zeta = state["zeta"] * ((1 + sigma**2) * (1 + sigma_next**2)).sqrt()
        return x_next.addcmul_(grad, zeta.to(x.dtype), value=-1), x0_hat
