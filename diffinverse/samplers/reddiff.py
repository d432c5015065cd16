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

Normalisation: the data term is divided by ``||A||^2`` (estimated once per call by power
iteration, :func:`~diffinverse.samplers.base.operator_scale`; 1 for a nonlinear physics), so the
gradient is

    g = A^H (A mu - y) / ||A||^2  +  lambda * w(sigma) / sigma * (mu - D(mu + sigma eps, sigma)),

and ``lam`` weighs two terms in image units whatever the operator's scale, the number of
measurements or coils. The official code (github.com/NVlabs/RED-diff, ``algos/reddiff.py``) takes
both terms as means over entries (the data term over the ``m`` entries of ``y``, the regulariser
over the ``d`` entries of ``mu``); its ``lambda`` is this one times ``||A||^2 d / m``, so its
settings change with the sampling fraction, the number of coils and the operator. Adam runs on
the scale-free gradient with ``eps`` 1e-8 times ``m``: for an operator of norm 1 the official
code's Adam (1e-8 on its per-entry means), and for ``c A``, ``c y`` the same updates as for
``A``, ``y``. Means are per
batch item, so a batch of ``N`` samples behaves exactly as ``N`` separate runs. The noise level of
``y`` enters nowhere: ``lam`` sets the balance between data and prior.

Defaults: Adam with betas (0.9, 0.99) (official) and linear weighting (official); ``mu``
initialised from the warm start (Tikhonov by CG for a linear physics, as every sampler here; the
official code uses ``A_dagger(y)``); ``lam``, ``lr`` and a warm start chosen on the tuning images
of every task of :mod:`diffinverse.tasks` (the official runs use 1000 steps from the full grid,
``lr`` 0.1-0.5 for images on ``[-1, 1]``). ``lr`` is in image units (Adam moves each pixel by
about ``lr`` per step).

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

from diffinverse.samplers.base import DiffusionSampler, data_fidelity_grad, default_start, operator_scale

__all__ = ["REDDiff"]

NUM_STEPS, LAM, LR, SIGMA_START = 100, 0.1, 0.02, 0.1
"""Defaults: steps of the full grid, the regulariser's weight, Adam's learning rate and the
largest noise level visited, chosen on the tuning images of every task of :mod:`diffinverse.tasks`
(``benchmarks/samplers/tune_defaults.py``)."""

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
        num_steps: steps of the full grid (one noise level and one network forward each; a warm
            start runs the part below ``sigma_start``).
        lam: weight ``lambda`` of the diffusion regulariser against the data term divided by
            ``||A||^2`` (see the module notes).
        lr: Adam learning rate, in image units.
        betas: Adam's moment decay rates.
        weighting: ``"linear"``, ``"sqrt"``, ``"square"`` or ``"const"`` (see the module notes).
        sigma_start: the largest noise level visited (default ``SIGMA_START``; ``None``: the
            whole grid). ``x_init`` replaces the Tikhonov warm start as the starting ``mu`` (no
            noise is added: ``mu`` is not a noisy state).
        **kwargs: schedule, progress, callback, autocast, channels_last, compile and cuda_graph
            options of :class:`~diffinverse.samplers.base.DiffusionSampler`.

    References:
        Mardani et al., "A Variational Perspective on Solving Inverse Problems with Diffusion
        Models", ICLR 2024.
    """

    supports_cuda_graph = True
    step_size_hint = "lr"

    def __init__(self, prior, *, num_steps: int = NUM_STEPS, lam: float = LAM, lr: float = LR,
                 betas: tuple[float, float] = (0.9, 0.99),
                 weighting: Literal["linear", "sqrt", "square", "const"] = "linear",
                 sigma_start: float | None = SIGMA_START, **kwargs):
        super().__init__(prior, num_steps=num_steps, sigma_start=sigma_start, **kwargs)
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
        # mu_0: the caller's x_init or the base class's warm start (set whenever warm), else the
        # same default; a dense copy in the state's layout, which the moments (zeros_like) share:
        # the fused Adam update below pairs the entries of mu, its gradient and moments by memory position
        mu = default_start(y, physics) if x_init is None else x_init
        return mu.detach().clone(memory_format=self.state_format(mu))

    def init_state(self, x, y, physics):
        # for a linear physics the data gradient is A^H A mu - A^H y: A^H y once, then one normal
        # operator per step (fewer kernels than A, a subtraction, A^H and a negation)
        aty = _same_layout(physics.A_adjoint(y), x) if isinstance(physics, LinearPhysics) else None
        # Adam's step count lives on the state's device, where the fused update reads it
        count = torch.zeros((), dtype=torch.float32, device=x.device)
        scale = torch.tensor(operator_scale(physics, x), dtype=torch.float32 if x.device.type == "mps"
                             else torch.float64, device=x.device)
        return {"m": torch.zeros_like(x), "v": torch.zeros_like(x), "count": count, "aty": aty, "scale": scale}

    def step(self, x, sigma, sigma_next, noise, y, physics, state):
        mu = x
        # prior term (Eq. 9): eps_hat - eps = (mu - D(mu + sigma eps, sigma)) / sigma, the network not
        # differentiated; x0_hat stays an inference tensor (read-only), which the updates below only read
        with torch.inference_mode():
            x0_hat = self.denoise(torch.addcmul(mu, noise, sigma.to(mu.dtype)), sigma)
        # gradient with the data term relative to s = ||A||^2 (scale-free: c A and c y give the same g):
        #   g = grad_data / s + lam * w(sigma) / sigma * (mu - x0_hat).
        # Adam's eps is eps * m (m entries of y): for ||A|| = 1 this is the official code's Adam (eps
        # 1e-8 on its per-entry means g / m; Adam is invariant to a constant gradient scale k when
        # eps is scaled by k)
        n_y = y.numel() // y.shape[0]
        prior_weight = self.lam * _WEIGHTS[self.weighting](sigma) / sigma
        if state["aty"] is not None:
            # out of place: A^H A may return its input itself (an identity physics)
            grad_data = physics.A_adjoint_A(mu) - state["aty"]
        else:
            grad_data, _ = data_fidelity_grad(mu, y, physics)
        grad_data.div_(state["scale"].to(mu.dtype))
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
