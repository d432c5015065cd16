"""An exact prior: a Gaussian mixture on small images, with closed-form denoiser and posterior.

For ``x0 ~ sum_k w_k N(mu_k, S_k)`` and ``x = x0 + sigma * n``, the noisy density is again a
mixture, ``p_sigma(x) = sum_k w_k N(x; mu_k, S_k + sigma^2 I)``, and Tweedie's mean is

    D(x, sigma) = sum_k r_k(x) [mu_k + S_k (S_k + sigma^2 I)^{-1} (x - mu_k)],

with responsibilities ``r_k(x) ∝ w_k N(x; mu_k, S_k + sigma^2 I)``. For a linear measurement
``y = A x0 + noise_sigma * n`` the posterior of ``x0`` is a mixture of Gaussians too (each
component conditioned as in a Kalman update, re-weighted by its evidence). These closed forms
make :class:`GaussianMixturePrior` the oracle every sampler is tested against.

Every computation is done in float64, whatever the input dtype, and returned in the input's
dtype. Each covariance is diagonalised once, ``S_k = U_k diag(l_k) U_k^T``, so that
``S_k + sigma^2 I = U_k diag(l_k + sigma^2) U_k^T`` costs nothing for any number of per-item
noise levels; log-densities are combined with ``logsumexp``.

References:
    Efron, "Tweedie's formula and selection bias", JASA 2011.
    Bishop, "Pattern Recognition and Machine Learning", 2006, Sec. 2.3.3 (linear Gaussian model).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffinverse.priors.base import Prior, as_sigma

__all__ = ["GaussianMixture", "GaussianMixturePrior"]

_F64 = torch.float64


def _check_params(weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor,
                  shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Validate and convert mixture parameters to float64; normalise the weights."""
    shape = tuple(int(s) for s in shape)
    d = math.prod(shape)
    weights = torch.as_tensor(weights).to(_F64)
    means = torch.as_tensor(means).to(_F64)
    covs = torch.as_tensor(covs).to(_F64)
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(f"weights must be a non-empty (K,) tensor, got shape {tuple(weights.shape)}")
    k = weights.shape[0]
    if means.shape != (k, d):
        raise ValueError(f"means must have shape (K, d) = ({k}, {d}) for image shape {shape}, "
                         f"got {tuple(means.shape)}")
    if covs.shape != (k, d, d):
        raise ValueError(f"covs must have shape (K, d, d) = ({k}, {d}, {d}), got {tuple(covs.shape)}")
    if not (torch.isfinite(weights).all() and torch.isfinite(means).all() and torch.isfinite(covs).all()):
        raise ValueError("weights, means and covs must be finite")
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    asym = (covs - covs.transpose(-1, -2)).abs().amax()
    if asym > 1e-6 * covs.abs().amax().clamp_min(1e-300):
        raise ValueError(f"covs must be symmetric, got an asymmetry of {asym.item():.3e}")
    return weights / weights.sum(), means, 0.5 * (covs + covs.transpose(-1, -2)), shape


def _sqrt_psd(covs: torch.Tensor) -> torch.Tensor:
    """A square root ``L`` with ``L L^T = S`` for symmetric PSD ``S`` (K, d, d), singular allowed."""
    evals, evecs = torch.linalg.eigh(covs)
    return evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)


def _sample(weights: torch.Tensor, means: torch.Tensor, roots: torch.Tensor, n: int,
            shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    """``n`` exact draws ``mu_k + L_k eps`` with ``k ~ Categorical(weights)``, as ``(n, *shape)``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    k = torch.multinomial(weights.to(gen_device), n, replacement=True, generator=generator)
    eps = torch.randn(n, means.shape[1], generator=generator, dtype=_F64, device=gen_device)
    k, eps = k.to(means.device), eps.to(means.device)
    x = means[k] + torch.einsum("nde,ne->nd", roots[k], eps)
    return x.reshape(n, *shape).to(dtype)


def _flatten(x: torch.Tensor, shape: tuple[int, ...], who: str) -> torch.Tensor:
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"{who} expects x of shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).to(_F64)


def _component_terms(xf: torch.Tensor, means: torch.Tensor, evals: torch.Tensor, evecs: torch.Tensor,
                     s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-item, per-component quantities of ``N(x; mu_k, S_k + s2 I)`` in each eigenbasis.

    Args:
        xf: ``(B, d)`` points; means ``(K, d)``; evals ``(K, d)``; evecs ``(K, d, d)`` (columns);
            s2: ``(B,)`` added variances.

    Returns:
        ``z = U_k^T (x - mu_k)`` ``(B, K, d)``, ``var = l_k + s2`` ``(B, K, d)``, and the
        log-densities ``log N(x; mu_k, S_k + s2 I)`` ``(B, K)``.
    """
    z = torch.einsum("bkd,kde->bke", xf[:, None, :] - means[None], evecs)
    var = evals[None] + s2[:, None, None]
    d = xf.shape[1]
    log_n = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1) + d * math.log(2 * math.pi))
    return z, var, log_n


class GaussianMixture:
    """A Gaussian mixture over flattened images: what :meth:`GaussianMixturePrior.posterior` returns.

    Attributes:
        weights: ``(K,)`` mixture weights, summing to 1 (float64).
        means: ``(K, d)`` component means (float64).
        covs: ``(K, d, d)`` component covariances, symmetric PSD (may be singular, e.g. the
            posterior for noiseless measurements) (float64).
        shape: the image shape ``(C, H, W)`` with ``C * H * W = d``.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, *,
                 shape: Sequence[int]):
        self.weights, self.means, self.covs, self.shape = _check_params(weights, means, covs, shape)
        self._roots = _sqrt_psd(self.covs)

    def mean(self) -> torch.Tensor:
        """The mixture mean ``sum_k w_k mu_k``, ``(d,)`` float64."""
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        """The mixture covariance ``sum_k w_k (S_k + mu_k mu_k^T) - m m^T``, ``(d, d)`` float64."""
        m = self.mean()
        centred = self.means - m
        second = torch.einsum("k,kd,ke->de", self.weights, centred, centred)
        return torch.einsum("k,kde->de", self.weights, self.covs) + second

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``n`` exact draws, ``(n, C, H, W)`` in ``dtype``."""
        return _sample(self.weights, self.means, self._roots, n, self.shape, generator, dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density ``log p(x)`` for ``x: (B, C, H, W)``, returned as ``(B,)`` in ``x``'s dtype.

        Raises:
            ValueError: if a component covariance is singular (the density does not exist).
        """
        xf = _flatten(x, self.shape, "GaussianMixture.log_prob")
        evals, evecs = torch.linalg.eigh(self.covs)
        if (evals <= 1e-12 * evals.amax(-1, keepdim=True).clamp_min(1e-300)).any():
            raise ValueError("a component covariance is singular (e.g. a posterior for noise_sigma=0): "
                             "the mixture has no density")
        _, _, log_n = _component_terms(xf, self.means, evals, evecs, xf.new_zeros(xf.shape[0]))
        return torch.logsumexp(self.weights.log() + log_n, dim=1).to(x.dtype)


class GaussianMixturePrior(Prior):
    """Exact prior ``x0 ~ sum_k w_k N(mu_k, S_k)`` on small images, with closed-form Tweedie mean.

    Meant for images of a few dozen pixels (``d = C * H * W`` up to ~64): the cost per call is
    ``O(B K d^2)``. Parameters are stored as float64 buffers (they move with ``.to(device)``).

    Args:
        weights: ``(K,)`` non-negative component weights (normalised to sum to 1).
        means: ``(K, d)`` component means, ``d = C * H * W``, in data units.
        covs: ``(K, d, d)`` symmetric positive-definite component covariances.
        shape: image shape ``(C, H, W)`` of one sample.
        sigma_min, sigma_max: noise range advertised to samplers (data units).
        data_range: nominal ``(low, high)`` intensity range (a mixture has unbounded support).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> prior = GaussianMixturePrior.random(3, (1, 4, 4), generator=g)
        >>> x0 = prior.sample(8, generator=g)                                   # (8, 1, 4, 4)
        >>> x0_hat = prior(x0 + 0.5 * torch.randn(x0.shape, generator=g), 0.5)  # Tweedie mean

    References:
        Efron, "Tweedie's formula and selection bias", JASA 2011.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, *,
                 shape: Sequence[int], sigma_min: float = 0.002, sigma_max: float = 80.0,
                 data_range: tuple[float, float] = (-1.0, 1.0)):
        super().__init__()
        weights, means, covs, shape = _check_params(weights, means, covs, shape)
        evals, evecs = torch.linalg.eigh(covs)
        if (evals <= 0).any():
            raise ValueError(f"covs must be positive definite, got a smallest eigenvalue of {evals.min().item():.3e}")
        self.shape = shape
        self.channels = shape[0]
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.register_buffer("weights", weights)
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("evals", evals)
        self.register_buffer("evecs", evecs)

    @classmethod
    def random(cls, num_components: int, shape: Sequence[int], *, generator: torch.Generator,
               mean_scale: float = 1.0, std_range: tuple[float, float] = (0.1, 0.5),
               sigma_min: float = 0.002, sigma_max: float = 80.0,
               data_range: tuple[float, float] = (-1.0, 1.0)) -> GaussianMixturePrior:
        """A random, well-conditioned mixture for tests.

        Means are ``mean_scale * N(0, I)``; each covariance is ``Q diag(s^2) Q^T`` with a random
        rotation ``Q`` and standard deviations ``s`` log-uniform in ``std_range`` (so its
        condition number is at most ``(std_range[1] / std_range[0])^2``); weights are uniform in
        ``[0.5, 1.5]``, normalised.

        Args:
            num_components: ``K``.
            shape: image shape ``(C, H, W)``.
            generator: the source of randomness (the global RNG is not used).
            mean_scale: spread of the component means (data units).
            std_range: ``(low, high)`` per-direction standard deviations of each component.
            sigma_min, sigma_max, data_range: as in the constructor.
        """
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        lo, hi = std_range
        if not 0 < lo <= hi:
            raise ValueError(f"std_range must satisfy 0 < low <= high, got {std_range}")
        d = math.prod(shape)
        dev = generator.device

        def uniform(*size: int) -> torch.Tensor:
            return torch.rand(*size, generator=generator, dtype=_F64, device=dev)

        weights = 0.5 + uniform(num_components)
        means = mean_scale * torch.randn(num_components, d, generator=generator, dtype=_F64, device=dev)
        q, r = torch.linalg.qr(torch.randn(num_components, d, d, generator=generator, dtype=_F64, device=dev))
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar-distributed rotation
        std = lo * (hi / lo) ** uniform(num_components, d)
        covs = (q * std.unsqueeze(-2) ** 2) @ q.transpose(-1, -2)
        return cls(weights, means, covs, shape=shape, sigma_min=sigma_min, sigma_max=sigma_max,
                   data_range=data_range)

    @property
    def mixture(self) -> GaussianMixture:
        """The prior itself as a :class:`GaussianMixture` (for its moments)."""
        return GaussianMixture(self.weights, self.means, self.covs, shape=self.shape)

    def _terms(self, x: torch.Tensor, sigma: torch.Tensor, who: str):
        xf = _flatten(x, self.shape, who)
        s2 = sigma.to(device=xf.device, dtype=_F64) ** 2
        evals, evecs = self.evals.to(_F64), self.evecs.to(_F64)
        z, var, log_n = _component_terms(xf, self.means.to(_F64), evals, evecs, s2)
        logits = self.weights.to(_F64).log() + log_n
        return z, var, logits, evals, evecs

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact Tweedie mean for ``x: (B, C, H, W)``, ``sigma: (B,)``; same shape and dtype as ``x``."""
        z, var, logits, evals, evecs = self._terms(x, sigma, type(self).__name__)
        r = torch.softmax(logits, dim=1)
        # mu_k + U_k diag(l_k / (l_k + sigma^2)) U_k^T (x - mu_k), averaged with responsibilities
        x0_k = self.means.to(_F64) + torch.einsum("kde,bke->bkd", evecs, evals[None] / var * z)
        return torch.einsum("bk,bkd->bd", r, x0_k).reshape(x.shape).to(x.dtype)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Exact ``grad_x log p_sigma(x)``, also at ``sigma = 0``; same shape and dtype as ``x``."""
        z, var, logits, _, evecs = self._terms(x, as_sigma(sigma, x), "GaussianMixturePrior.score")
        r = torch.softmax(logits, dim=1)
        grad_k = -torch.einsum("kde,bke->bkd", evecs, z / var)
        return torch.einsum("bk,bkd->bd", r, grad_k).reshape(x.shape).to(x.dtype)

    def log_prob(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``log p_sigma(x)`` of the noisy marginal (``sigma = 0``: the prior), ``(B,)`` in ``x``'s dtype.

        Differentiable in ``x``.
        """
        _, _, logits, _, _ = self._terms(x, as_sigma(sigma, x), "GaussianMixturePrior.log_prob")
        return torch.logsumexp(logits, dim=1).to(x.dtype)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``n`` exact prior draws, ``(n, C, H, W)`` in ``dtype`` on the prior's device."""
        roots = self.evecs.to(_F64) * self.evals.to(_F64).sqrt().unsqueeze(-2)
        return _sample(self.weights.to(_F64), self.means.to(_F64), roots, n, self.shape, generator, dtype)

    def matrix(self, physics) -> torch.Tensor:
        """Materialise a linear ``physics.A`` as an ``(m, d)`` float64 matrix.

        ``A`` is applied (in float64) to the batch of the ``d`` basis images; complex outputs
        are split into real and imaginary parts. ``m`` is the number of real entries of one
        measurement.
        """
        d = math.prod(self.shape)
        basis = torch.eye(d, dtype=_F64, device=self.means.device).reshape(d, *self.shape)
        with torch.no_grad():
            cols = physics.A(basis)
        if cols.is_complex():
            cols = torch.view_as_real(cols)
        return cols.reshape(d, -1).to(_F64).T

    def posterior(self, y: torch.Tensor, physics, noise_sigma: float) -> GaussianMixture:
        """Exact posterior of ``x0`` given ``y = A x0 + noise_sigma * n``, ``n ~ N(0, I)``.

        ``A`` is materialised from ``physics.A`` (any linear deepinv physics; its own noise
        model is ignored, ``noise_sigma`` states the noise). Writing ``A = U diag(s) V^T``
        (SVD, rank ``r``), the part of ``y`` outside ``range(A)`` is pure noise, independent of
        ``x0``, and drops out; in the range, ``B = diag(s_r) V_r^T`` has full row rank, so per
        component ``G_k = B S_k B^T + noise_sigma^2 I_r`` is positive definite even for
        ``noise_sigma = 0``, and the noiseless limit is handled exactly (no jitter):

            w'_k ∝ w_k N(y_r; B mu_k, G_k),
            mu'_k = mu_k + S_k B^T G_k^{-1} (y_r - B mu_k),
            S'_k = S_k - S_k B^T G_k^{-1} B S_k,

        with ``y_r = U_r^T y``. For ``noise_sigma = 0`` the ``S'_k`` are singular (rank ``d - r``)
        and the samples satisfy ``A x = y`` up to round-off (for consistent ``y``).

        Args:
            y: one measurement, shaped like ``physics.A(x)`` for ``x: (1, C, H, W)``.
            physics: a linear physics with ``A``.
            noise_sigma: standard deviation of the Gaussian measurement noise, ``>= 0``.

        Returns:
            The posterior :class:`GaussianMixture` (float64).

        References:
            Bishop, "Pattern Recognition and Machine Learning", 2006, Eqs. 2.113-2.117.
        """
        if not (math.isfinite(noise_sigma) and noise_sigma >= 0):
            raise ValueError(f"noise_sigma must be finite and >= 0, got {noise_sigma}")
        if y.ndim < 1 or y.shape[0] != 1:
            raise ValueError(f"posterior needs a single measurement (batch size 1), got shape {tuple(y.shape)}")
        a = self.matrix(physics)
        yf = (torch.view_as_real(y) if y.is_complex() else y).to(device=a.device, dtype=_F64).reshape(-1)
        if yf.numel() != a.shape[0]:
            raise ValueError(f"y has {yf.numel()} entries but physics.A gives {a.shape[0]} per image")
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        rank = int((s > s.amax() * max(a.shape) * torch.finfo(_F64).eps).sum()) if s.numel() else 0
        if rank == 0:
            return GaussianMixture(self.weights, self.means, self.covs, shape=self.shape)
        b = s[:rank, None] * vh[:rank]                      # (r, d)
        y_r = u[:, :rank].T @ yf                            # (r,)
        means, covs = self.means.to(_F64), self.covs.to(_F64)
        bs = b @ covs                                       # (K, r, d) = B S_k
        g = bs @ b.T + noise_sigma**2 * torch.eye(rank, dtype=_F64, device=a.device)
        chol = torch.linalg.cholesky(0.5 * (g + g.transpose(-1, -2)))
        w = torch.linalg.solve_triangular(chol, bs, upper=False)          # L^{-1} B S_k
        res = (y_r - means @ b.T).unsqueeze(-1)                            # (K, r, 1)
        white = torch.linalg.solve_triangular(chol, res, upper=False)     # L^{-1} (y_r - B mu_k)
        post_means = means + (w.transpose(-1, -2) @ white).squeeze(-1)
        post_covs = covs - w.transpose(-1, -2) @ w
        log_ev = (-0.5 * (white.squeeze(-1) ** 2).sum(-1)
                  - torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1))  # constants cancel
        post_w = torch.softmax(self.weights.to(_F64).log() + log_ev, dim=0)
        return GaussianMixture(post_w, post_means, 0.5 * (post_covs + post_covs.transpose(-1, -2)),
                               shape=self.shape)
