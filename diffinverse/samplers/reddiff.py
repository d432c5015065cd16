"""RED-Diff: variational posterior sampling by regularisation with a diffusion denoiser.

RED-Diff fits a point estimate ``mu`` (a Dirac variational distribution) by Adam on

    ||y - A(mu)||^2 / 2  +  lambda * sum_t w(sigma_t) E_eps ||eps_hat(mu + sigma_t eps, sigma_t) - eps||^2,

visiting the noise levels ``sigma_t`` from large to small (one per optimisation step). The
regulariser's gradient is taken with the network's Jacobian dropped (Mardani et al. 2024, Eq. 9),
so the network is only ever evaluated, never differentiated (here under ``torch.inference_mode``).
With ``eps_hat = (x - D(x, sigma)) / sigma`` at ``x = mu + sigma eps``, in VE form,

    eps_hat - eps = (mu - D(mu + sigma eps, sigma)) / sigma.

Weightings ``w(sigma)`` (the official code's ``denoise_term_weight``, applied to ``eps_hat - eps``;
``sigma = sqrt(1 - abar) / abar`` is the official ``snr_inv``):

* ``"linear"`` (default): ``w = sigma`` (the paper's ``sigma_t / alpha_t``), i.e. the step pulls by
  ``lambda (mu - D)``;
* ``"sqrt"``: ``w = sqrt(sigma)``; ``"square"``: ``w = sigma^2``; ``"const"``: ``w = 1``.

Normalisation as in the official code (github.com/NVlabs/RED-diff, ``algos/reddiff.py``): both
terms are means over the entries of one item, ``mean((y - A mu)^2) / 2`` over the ``m`` entries of
``y`` and ``lambda * w * mean((eps_hat - eps) mu)`` over the ``d`` entries of ``mu``, so the gradient is

    g = A^H (A mu - y) / m  +  lambda * w(sigma) / sigma * (mu - D(mu + sigma eps, sigma)) / d.

``m`` counts every entry of ``y``: for masked operators that return zero-filled arrays (MRI,
inpainting) it includes the unmeasured zeros, whereas the official operators return only the
measured entries, so here the data term weighs less by the sampling fraction (compensate by
lowering ``lam`` by the same factor). Means are taken per batch item, so a batch of ``N`` samples
behaves exactly as ``N`` separate runs. The noise level of ``y`` enters nowhere: ``lam`` sets the
balance between data and prior.

Defaults as in the official code: ``lam = 0.25`` (``grad_term_weight``), Adam with betas (0.9, 0.99)
and ``lr`` in 0.1-0.5 (here 0.25), linear weighting, ``mu`` initialised from
``physics.A_dagger(y)``; the official runs use 1000 steps (here 100 by default). ``lr`` is in data
units (Adam moves each pixel by about ``lr`` per step), for images on ``[-1, 1]``: scale it with the
data range of other priors.

The output is a regularised point estimate near a posterior mode, not a posterior sample: the
noise ``eps`` makes repeated runs differ only slightly, and their spread is not the posterior's.

References:
    Mardani, Song, Kautz & Vahdat, "A Variational Perspective on Solving Inverse Problems with
    Diffusion Models", ICLR 2024.
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015 (Algorithm 1).
"""
from __future__ import annotations

from typing import Literal

import torch
from deepinv.physics import LinearPhysics
from torch.optim.adam import adam

from diffinverse.samplers.base import DiffusionSampler, data_fidelity_grad

__all__ = ["REDDiff"]

_WEIGHTS = {   # w(sigma) of a 0-d sigma tensor
    "linear": lambda s: s,
    "sqrt": torch.sqrt,
    "square": lambda s: s * s,
    "const": lambda s: 1.0,
}


class REDDiff(DiffusionSampler):
    """RED-Diff (Mardani et al. 2024) on a VE prior.

    Args:
        prior: the denoiser ``D(x, sigma)``.
        num_steps: optimisation steps, one noise level and one network forward each.
        lam: weight ``lambda`` of the diffusion regulariser (official ``grad_term_weight``).
        lr: Adam learning rate, in data units.
        betas: Adam's moment decay rates.
        weighting: ``"linear"``, ``"sqrt"``, ``"square"`` or ``"const"`` (see the module notes).
        **kwargs: schedule, warm start, progress, callback, autocast, channels_last, compile and
            cuda_graph options of :class:`~diffinverse.samplers.base.DiffusionSampler`. A warm
            start (``sigma_start``) runs only the noise levels below ``sigma_start``; ``x_init``
            replaces ``A_dagger(y)`` as the starting ``mu`` (no noise is added: ``mu`` is not a
            noisy state).

    References:
        Mardani et al., "A Variational Perspective on Solving Inverse Problems with Diffusion
        Models", ICLR 2024.
    """

    supports_cuda_graph = True

    def __init__(self, prior, *, num_steps: int = 100, lam: float = 0.25, lr: float = 0.25,
                 betas: tuple[float, float] = (0.9, 0.99),
                 weighting: Literal["linear", "sqrt", "square", "const"] = "linear", **kwargs):
        super().__init__(prior, num_steps=num_steps, **kwargs)
        if weighting not in _WEIGHTS:
            raise ValueError(f"weighting must be one of {sorted(_WEIGHTS)}, got {weighting!r}")
        if not (lam >= 0 and lr > 0 and all(0 <= b < 1 for b in betas)):
            raise ValueError(f"need lam >= 0, lr > 0 and betas in [0, 1), got lam={lam}, lr={lr}, betas={betas}")
        self.lam = float(lam)
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.weighting = weighting
        self.eps = 1e-8

    def init_x(self, y, physics, x_init, sigma0, warm, generator, x_shape):
        # mu_0 = A^dagger(y) (official initialisation), or the caller's x_init; a dense copy in the
        # state's layout, which the moments (zeros_like) share: the fused Adam update below pairs
        # the entries of mu, its gradient and moments by memory position
        mu = physics.A_dagger(y) if x_init is None else x_init
        return mu.detach().clone(memory_format=self.state_format(mu))

    def init_state(self, x, y, physics):
        # for a linear physics the data gradient is A^H A mu - A^H y: A^H y once, then one normal
        # operator per step (fewer kernels than A, a subtraction, A^H and a negation)
        aty = _same_layout(physics.A_adjoint(y), x) if isinstance(physics, LinearPhysics) else None
        # Adam's step count lives on the state's device, where the fused update reads it
        count = torch.zeros((), dtype=torch.float32, device=x.device)
        return {"m": torch.zeros_like(x), "v": torch.zeros_like(x), "count": count, "aty": aty}

    def step(self, x, sigma, sigma_next, noise, y, physics, state):
        mu = x
        # prior term (Eq. 9): eps_hat - eps = (mu - D(mu + sigma eps, sigma)) / sigma, the network not
        # differentiated; x0_hat stays an inference tensor (read-only), which the updates below only read
        with torch.inference_mode():
            x0_hat = self.denoise(torch.addcmul(mu, noise, sigma.to(mu.dtype)), sigma)
        # gradient with the official per-item normalisation (n_y entries of y, n_x of mu):
        #   g = grad_data / n_y + lam * w(sigma) / sigma * (mu - x0_hat) / n_x.
        # Adam is run on n_y * g with eps * n_y: the same update (Adam is invariant to a constant
        # gradient scale k when eps is scaled by k), with one kernel less
        n_x, n_y = mu.numel() // mu.shape[0], y.numel() // y.shape[0]
        prior_weight = self.lam * _WEIGHTS[self.weighting](sigma) / sigma / n_x * n_y
        if state["aty"] is not None:
            # out of place: A^H A may return its input itself (an identity physics)
            grad_data = physics.A_adjoint_A(mu) - state["aty"]
        else:
            grad_data, _ = data_fidelity_grad(mu, y, physics)
        g = _same_layout(grad_data.addcmul_(torch.sub(mu, x0_hat), prior_weight.to(mu.dtype)), mu)
        # Adam (Kingma & Ba, Algorithm 1, with bias corrections) as one fused in-place update of mu
        # and its moments (torch.optim's functional Adam; it advances the step count)
        adam([mu], [g], [state["m"]], [state["v"]], [], [state["count"]], fused=True, amsgrad=False,
             beta1=self.betas[0], beta2=self.betas[1], lr=self.lr, weight_decay=0.0, eps=self.eps * n_y,
             maximize=False)
        return mu, x0_hat


def _same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` with ``like``'s strides (a copy only if they differ): the fused Adam update pairs the
    entries of ``mu``, its gradient and moments by memory position."""
    return t if t.stride() == like.stride() else torch.empty_like(like).copy_(t)
