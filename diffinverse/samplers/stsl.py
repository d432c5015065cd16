"""STSL: second-order Tweedie from a surrogate loss, on a latent diffusion prior (Rout et al., CVPR 2024).

The state is a latent ``z`` of a :class:`~diffinverse.priors.latent.LatentPrior` at noise level
``sigma`` (VE form, latent units); a pixel prior runs through
:meth:`~diffinverse.priors.latent.LatentPrior.identity`. Each step minimises, by ``K`` gradient
steps on ``z`` at the fixed ``sigma``, the surrogate loss (paper Eq. 4, Theorem 4.4)

    L(z) = data(Dec(z0_hat(z)))  +  (eta / d) E_eps[ eps^T (score(z + c eps) - score(z)) ]

with ``z0_hat = D(z, sigma)`` (first-order Tweedie), ``d`` the latent dimension per item and
``score = (D(z) - z) / sigma^2``. The second term is a Hutchinson estimate of ``c tr(Hess log
p_sigma(z))`` (exact up to ``O(c^3)``); ``Cov[z0 | z] = sigma^2 (I + sigma^2 Hess log p_sigma)``,
so descending it moves ``z`` where the first-order Tweedie estimate is least uncertain, i.e. least
biased. In VE form the probe's part is ``[eps^T (D(z + c eps) - D(z)) - c ||eps||^2] / sigma^2``;
``||eps||^2`` has no gradient, so each probe costs one network forward at ``z + c eps`` and one
backward there, and the backward at ``z`` is shared with the data term. One step::

    for k in 1..K:
        z0_hat = D(z, sigma)                                    first-order Tweedie
        g = grad_z L(z)                                         data + (eta / d) probe terms
        if k < K:  z = z - zeta (1 + sigma^2) g                 inner step at fixed sigma
    z_next = z0_hat + (sigma_next / sigma) (z - z0_hat)         DDIM, eta_ddim = 0
    z_next = z_next - zeta sqrt((1 + sigma^2)(1 + sigma_next^2)) g     the K-th step (PSLD/DPS-style)

The result is ``Dec(z)`` of the last state (at ``sigma = 0``, the last Tweedie estimate with its
gradient step). ``second_order=False`` drops the probe term: the first-order latent sampler the
paper compares against (latent DPS, i.e. PSLD without its gluing term), which with ``K = 1`` is
one forward and one backward per step.

Choices the paper leaves open, as made here:

* **Probe scale** ``c``: ``probe="paper"`` uses ``c = sqrt(1 + sigma^2)`` (the paper's unit probe
  in the variance-preserving state, in VE units: large and non-local at low ``sigma``);
  ``probe="local"`` uses ``c = kappa sigma`` (a probe at the scale of the noise, where the
  finite difference estimates the Hessian trace).
* **Data term**: the plain norm ``||y - A(x0_hat)||`` (DPS's official code; default) or the
  squared norm ``||y - A(x0_hat)||^2`` (``squared_norm=True``, the paper's ``lam ||.||^2`` with
  ``lam`` folded into ``zeta``).
* **Step size**: gradient descent on ``L`` with DPS's VE scaling of ``zeta`` (the official
  code steps the VP state; ``(1 + sigma^2)`` at fixed ``sigma``), so one ``zeta`` means the same
  as in :class:`~diffinverse.samplers.dps.DPS`; the probe term shares it (its weight is ``eta``).
* **Probes**: ``num_probes`` Rademacher-free Gaussian probes per inner step, fresh at every
  inner step (the average over the ``K`` steps is the paper's "stochastic averaging"); they are
  the step's noise draws, so ``eta = 0`` draws none and consumes no randomness.
* **Warm start**: ``sigma_start`` (latent units) starts from ``Enc(x_init) + sigma_start n``
  with ``x_init`` the package's default start (Tikhonov for a linear physics, else
  ``A_dagger(y)``), network-free; ``None`` (default) is a cold start from latent noise.
* **Deviation, off by default**: ``final_dc_iters > 0`` ends with that many CG iterations on
  ``||x - Dec(z)||^2 / 2 + final_dc_gamma ||A x - y||^2 / 2`` in pixel space (linear physics).

Cost is counted separately: ``last_forward`` and ``last_backward`` network passes (the paper's
250 "NFE" for 50 x 5 count forwards with their backwards), and ``last_decoder_forward`` /
``last_decoder_backward`` for the decoder (none for the identity form's ``nn.Identity``, which
is still counted).

References:
    Rout, Chen, Kumar, Caramanis, Shakkottai & Chu, "Beyond First-Order Tweedie: Solving Inverse
    Problems using Latent Diffusion", CVPR 2024 (arXiv 2312.00852): Eq. 4, Theorem 4.4, Algorithm 1.
    Rout et al., "Solving Linear Inverse Problems Provably via Posterior Sampling with Latent
    Diffusion Models" (PSLD), NeurIPS 2023. Hutchinson, "A stochastic estimator of the trace of the
    influence matrix", 1989.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from deepinv.physics import LinearPhysics

from diffinverse.imaging import per_item
from diffinverse.priors.latent import LatentPrior
from diffinverse.samplers.base import DiffusionSampler, data_fidelity_grad, randn
from diffinverse.samplers.checks import state_like
from diffinverse.samplers.data_consistency import cg_data_consistency

__all__ = ["STSL", "as_latent_prior"]


def as_latent_prior(prior) -> LatentPrior:
    """``prior`` itself if it encodes and decodes, else a pixel prior in the identity form.

    Raises:
        TypeError: for an object with ``encode`` but no ``decode`` (or the reverse).
    """
    has_enc, has_dec = callable(getattr(prior, "encode", None)), callable(getattr(prior, "decode", None))
    if has_enc and has_dec:
        return prior
    if has_enc or has_dec:
        missing = "decode" if has_enc else "encode"
        raise TypeError(f"{type(prior).__name__} is a latent prior without {missing}(): STSL needs both "
                        f"encode (the warm start) and decode (the data term)")
    return LatentPrior.identity(prior)


class STSL(DiffusionSampler):
    """Second-order Tweedie sampler from a surrogate loss, on a latent (or, as identity, pixel) prior.

    Args:
        prior: a :class:`~diffinverse.priors.latent.LatentPrior` (or a pixel prior, wrapped by
            :meth:`~diffinverse.priors.latent.LatentPrior.identity`).
        num_steps: steps of the full grid (the paper: 50).
        zeta: step size of the gradient steps on ``L`` (the scale of :class:`DPS`'s ``zeta``).
        inner_steps: ``K`` gradient steps per noise level (the paper: 5).
        eta: weight of the Hessian-trace term (the paper: 0.02).
        second_order: ``False`` gives the first-order latent sampler (no probe term).
        num_probes: Hutchinson probes per inner step.
        probe: ``"paper"`` (``c = sqrt(1 + sigma^2)``) or ``"local"`` (``c = kappa sigma``).
        kappa: the local probe's scale.
        squared_norm: data term ``||y - A x||^2`` instead of ``||y - A x||``.
        final_dc_iters: CG iterations of the final pixel-space data consistency (0: none, the paper).
        final_dc_gamma: its data weight.
        **kwargs: schedule, warm start (``sigma_start``, latent units), progress, callback,
            autocast, channels_last and compile options of
            :class:`~diffinverse.samplers.base.DiffusionSampler`.

    Attributes:
        last_forward, last_backward: network forward and backward passes of the last call.
        last_decoder_forward, last_decoder_backward: decoder passes of the last call.

    Raises:
        TypeError: a latent prior without ``decode`` (or ``encode``).
        ValueError: a setting out of range.
    """

    step_size_hint = "zeta"

    def __init__(self, prior, *, num_steps: int = 50, zeta: float = 1.0, inner_steps: int = 5, eta: float = 0.02,
                 second_order: bool = True, num_probes: int = 1, probe: Literal["paper", "local"] = "paper",
                 kappa: float = 0.5, squared_norm: bool = False, final_dc_iters: int = 0,
                 final_dc_gamma: float = 1.0, **kwargs):
        prior = as_latent_prior(prior)
        super().__init__(prior, num_steps=num_steps, **kwargs)
        for name, v in (("zeta", zeta), ("eta", eta), ("kappa", kappa), ("final_dc_gamma", final_dc_gamma)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        for name, v, low in (("inner_steps", inner_steps, 1), ("num_probes", num_probes, 1),
                             ("final_dc_iters", final_dc_iters, 0)):
            if int(v) != v or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v}")
        if probe not in ("paper", "local"):
            raise ValueError(f'probe must be "paper" or "local", got {probe!r}')
        if probe == "local" and kappa <= 0:
            raise ValueError("the local probe needs kappa > 0")
        self.zeta, self.eta, self.kappa = float(zeta), float(eta), float(kappa)
        self.inner_steps, self.num_probes = int(inner_steps), int(num_probes)
        self.second_order, self.probe, self.squared_norm = bool(second_order), probe, bool(squared_norm)
        self.final_dc_iters, self.final_dc_gamma = int(final_dc_iters), float(final_dc_gamma)
        self.last_forward = self.last_backward = self.last_decoder_forward = self.last_decoder_backward = 0

    @property
    def noise_draws(self) -> int:
        """Probes per step: ``K * num_probes`` standard normal draws shaped like the latent."""
        return self.inner_steps * self.num_probes

    @property
    def uses_probes(self) -> bool:
        return self.second_order and self.eta > 0

    def __call__(self, y, physics, **kwargs):
        if torch.is_inference_mode_enabled():
            raise RuntimeError("STSL differentiates through the network: do not call it under torch.inference_mode()")
        out = super().__call__(y, physics, **kwargs)
        self.last_forward = self.last_nfe
        return out

    __call__.__doc__ = DiffusionSampler.__call__.__doc__

    def draws_noise(self, sigma, sigma_next):
        return self.uses_probes

    # -- the run's start and end -----------------------------------------------------------

    def init_x(self, y, physics, x_init, sigma0, warm, generator, x_shape):
        """Cold: ``sigma0 n`` shaped like the latent of ``A^H y``; warm: ``Enc(x_init) + sigma0 n``."""
        if x_init is not None and not warm:
            raise ValueError("x_init is a warm start: give sigma_start too (the noise level to start from)")
        image = x_init if x_init is not None else state_like(y, physics, None, x_shape)
        shape = self.prior.latent_shape(image.shape)      # names images that the decoder cannot give
        if x_init is None:
            return sigma0 * randn(shape, image, generator)
        with torch.no_grad():
            z = self.prior.encode(x_init)
        return z + sigma0 * randn(z.shape, z, generator)

    def init_state(self, z, y, physics):
        """Checks, before the first network call, that the decoder's images fit the physics; keeps
        the physics and ``A^H y`` for the final data consistency when it is on (else ``None``)."""
        self.last_backward = self.last_decoder_forward = self.last_decoder_backward = 0
        with torch.no_grad():
            x = self.prior.decode(z)
            try:
                y_hat = physics.A(x)
            except (RuntimeError, ValueError) as e:
                raise ValueError(f"the decoder's images {tuple(x.shape)} do not fit the physics ({e})") from None
        if y_hat.shape != y.shape:
            raise ValueError(f"the decoder's images {tuple(x.shape)} give measurements {tuple(y_hat.shape)}, "
                             f"but y is {tuple(y.shape)}")
        if not self.final_dc_iters:
            return None
        if not isinstance(physics, LinearPhysics):
            raise TypeError("final_dc_iters needs a LinearPhysics (CG on the normal equations)")
        return {"physics": physics, "aty": physics.A_adjoint(y).detach()}

    def finalize(self, z, state):
        with torch.no_grad():
            x = self.prior.decode(z)
        self.last_decoder_forward += 1
        if state is None:
            return x
        # the deviation from the paper (off by default): CG on ||x - Dec(z)||^2 / 2 + gamma ||A x - y||^2 / 2
        return cg_data_consistency(x, state["aty"], state["physics"], num_iters=self.final_dc_iters,
                                   gamma=self.final_dc_gamma, mu=1.0)

    # -- the step --------------------------------------------------------------------------

    def step(self, z, sigma, sigma_next, noise, y, physics, state):
        probes = None if noise is None else noise.view(self.inner_steps, self.num_probes, *z.shape)
        inner = (self.zeta * (1 + sigma**2)).to(z.dtype)
        for k in range(self.inner_steps):
            z0_hat, grad = self.surrogate_grad(z, sigma, y, physics, None if probes is None else probes[k])
            if k < self.inner_steps - 1:
                z = z - inner * grad                                           # inner step at fixed sigma
        z_next = torch.lerp(z0_hat, z, (sigma_next / sigma).to(z.dtype))      # DDIM, eta_ddim = 0
        last = self.zeta * ((1 + sigma**2) * (1 + sigma_next**2)).sqrt()
        return z_next.addcmul_(grad, last.to(z.dtype), value=-1), z0_hat

    def probe_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """``c``: ``sqrt(1 + sigma^2)`` (paper) or ``kappa sigma`` (local)."""
        return (1 + sigma**2).sqrt() if self.probe == "paper" else self.kappa * sigma

    def surrogate_grad(self, z, sigma, y, physics, eps):
        """``(z0_hat, grad_z L(z))`` at one noise level; ``eps: (P, *z.shape)`` probes or ``None``
        (first order). One network forward and backward at ``z`` plus one of each per probe."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            z0_hat = self.denoise(z, sigma)
            x0_hat = self.prior.decode(z0_hat)
            g_x, residual = data_fidelity_grad(x0_hat, y, physics)       # A^H (A x0_hat - y)
            if self.squared_norm:
                g_x = 2 * g_x
            else:
                norms = residual.flatten(1).norm(dim=1).clamp_min(torch.finfo(residual.dtype).tiny)
                g_x = g_x / per_item(norms, g_x)
            outputs, grads = [x0_hat], [g_x]
            probe_grad = None
            if eps is not None:
                # (eta / d) E[eps^T (score(z + c eps) - score(z))]: the score(z) part joins the
                # backward at z, each score(z + c eps) part has its own forward and backward
                w = (self.eta / (z[0].numel() * eps.shape[0]) / sigma**2).to(z.dtype)
                outputs.append(z0_hat)
                grads.append(-w * eps.sum(0))
                probe_grad = w * self._probe_vjps(z.detach(), sigma, eps, z0_hat)
            (grad,) = torch.autograd.grad(outputs, z, grad_outputs=grads)
        self.last_backward += 1
        self.last_decoder_forward += 1
        self.last_decoder_backward += 1
        if probe_grad is not None:
            grad = grad + probe_grad
        return z0_hat.detach(), grad

    def _probe_vjps(self, z, sigma, eps, z0_hat):
        """``sum_p J_D(z + c eps_p)^T eps_p``; a probe whose denoised value is not finite where
        ``z0_hat = D(z)`` is raises (a non-finite ``D(z)`` is left to the divergence check)."""
        c = self.probe_scale(sigma).to(z.dtype)
        total = torch.zeros_like(z)
        for e in eps:
            zp = (z + c * e).requires_grad_(True)
            with torch.enable_grad():
                dp = self.denoise(zp, sigma)
                if not torch.isfinite(dp).all() and torch.isfinite(z0_hat).all():
                    raise FloatingPointError(
                        f"STSL: the denoiser returned NaN or infinite values at a Hutchinson probe z + c eps "
                        f"(sigma = {float(sigma):.4g}, c = {float(c):.4g}); try probe='local' or a smaller kappa")
                (v,) = torch.autograd.grad(dp, zp, grad_outputs=e)
            self.last_backward += 1
            total += v
        return total

    @torch.no_grad()
    def trace_estimate(self, z: torch.Tensor, sigma: float, eps: torch.Tensor) -> torch.Tensor:
        """Hutchinson estimate of ``tr(Hess_z log p_sigma(z))`` per item, ``(B,)``: the mean over
        the probes ``eps: (P, *z.shape)`` of ``eps^T (score(z + c eps) - score(z)) / c``, with this
        sampler's ``c``. Network forwards only (``P + 1``)."""
        s = torch.as_tensor(sigma, dtype=torch.float64)
        c = float(self.probe_scale(s))
        score0 = (self.denoise(z, float(s)) - z) / float(s) ** 2
        est = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for e in eps:
            zp = z + c * e
            score = (self.denoise(zp, float(s)) - zp) / float(s) ** 2
            if not torch.isfinite(score).all():
                raise FloatingPointError("STSL: non-finite score at a Hutchinson probe")
            est += (e * (score - score0)).flatten(1).sum(1) / c
        return est / eps.shape[0]
