"""Classical reconstructions to put next to every diffusion result.

The operators' own baselines need no function here: ``physics.A_adjoint(y)`` is the zero-filled
reconstruction of MRI data (coil-combined with the maps for multi-coil operators), and
``physics.A_dagger(y)`` is SENSE by CG for the multi-coil MRI operators and filtered
back-projection for the CT operator. This module adds

* :func:`tv_reconstruction`: isotropic total-variation regularised least squares
  ``argmin_x ||A x - y||^2 / 2 + lam TV(x)`` by the primal-dual hybrid gradient method
  (Chambolle-Pock) for any linear physics.

References:
    Chambolle & Pock, "A first-order primal-dual algorithm for convex problems with applications
    to imaging", J. Math. Imaging Vis. 2011 (Algorithm 1).
    Rudin, Osher & Fatemi, "Nonlinear total variation based noise removal algorithms", Physica D 1992.
    Pruessmann et al., "SENSE: sensitivity encoding for fast MRI", MRM 1999.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from deepinv.physics import LinearPhysics

from diffinverse.imaging import per_item
from diffinverse.operators.norm import operator_norm_squared
from diffinverse.samplers.checks import check_finite, check_x_init

__all__ = ["tv_reconstruction", "tv_objective", "total_variation"]

# tv_reconstruction's step balancing (after Goldstein et al. 2015, Algorithm 2; here the change
# decays every iteration): the first change of tau and 1 / sigma, by 1 / (1 - a) or (1 - a), its
# decay per iteration, and the ratio of the residuals that triggers it
_ADAPT_START, _ADAPT_DECAY, _ADAPT_BAND = 0.5, 0.95, 1.5


def _spatial(x: torch.Tensor, spatial_dims: int | None) -> int:
    s = x.ndim - 2 if spatial_dims is None else spatial_dims
    if not 1 <= s <= x.ndim - 2:
        raise ValueError(f"spatial_dims must be in [1, {x.ndim - 2}] for x of shape {tuple(x.shape)}, got {s}")
    return s


def _grad(x: torch.Tensor, s: int) -> torch.Tensor:
    """Forward differences along the last ``s`` dims (0 at the far edge): ``(s, *x.shape)``."""
    out = x.new_zeros((s, *x.shape))
    for k in range(s):
        dim = x.ndim - s + k
        n = x.shape[dim]
        out[k].narrow(dim, 0, n - 1).copy_(x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1))
    return out


def _grad_adjoint(p: torch.Tensor, s: int) -> torch.Tensor:
    """Adjoint of :func:`_grad` (minus the divergence)."""
    out = torch.zeros_like(p[0])
    for k in range(s):
        dim = out.ndim - s + k
        n = out.shape[dim]
        pk = p[k].narrow(dim, 0, n - 1)
        out.narrow(dim, 0, n - 1).sub_(pk)
        out.narrow(dim, 1, n - 1).add_(pk)
    return out


def _magnitude(g: torch.Tensor) -> torch.Tensor:
    """Per-pixel norm of the gradient over directions and channels: ``(B, *spatial)``."""
    # two single-dim sums: one reduction over the non-adjacent dims (0, 2) is much slower on a CPU
    return g.square().sum(0).sum(1).sqrt()


def total_variation(x: torch.Tensor, *, spatial_dims: int | None = None) -> torch.Tensor:
    """Isotropic TV ``sum_pixels sqrt(sum_{c, directions} (grad x_c)^2)`` per item, ``(B,)``.

    Channels are coupled (vectorial TV); for a complex image in 2 channels this is the TV of the
    complex image (the modulus of its complex gradient).

    Args:
        x: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        spatial_dims: number of trailing dims to differentiate along (default all after ``C``).
    """
    return _magnitude(_grad(x, _spatial(x, spatial_dims))).flatten(1).sum(1)


def tv_objective(x: torch.Tensor, y: torch.Tensor, physics, lam: float, *,
                 spatial_dims: int | None = None) -> torch.Tensor:
    """``||A x - y||^2 / 2 + lam TV(x)`` per item, ``(B,)``."""
    data = 0.5 * _sq_norms(physics.A(x) - y)
    return data + lam * total_variation(x, spatial_dims=spatial_dims)


def _sq_norms(t: torch.Tensor) -> torch.Tensor:
    """Squared norm of each batch item: ``(B, ...)`` -> ``(B,)``."""
    return _norms(t).square()


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Norm of each batch item: ``(B, ...)`` -> ``(B,)`` (one pass, no temporary, any layout)."""
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)))


@torch.no_grad()
def tv_reconstruction(y: torch.Tensor, physics, *, lam: float = 0.01, num_iters: int = 10000, tol: float = 1e-5,
                      x_init: torch.Tensor | None = None, spatial_dims: int | None = None,
                      support: torch.Tensor | None = None, power_iters: int = 30, callback: Callable[[int, torch.Tensor], None] | None = None
                      ) -> torch.Tensor:
    """TV-regularised least squares ``argmin_x ||A x - y||^2 / 2 + lam TV(x)`` by PDHG.

    Chambolle-Pock Algorithm 1 with ``K x = (A x / c, grad x)``, ``F(u, v) = ||u - y / c||^2 / 2
    + (lam / c^2) ||v||_{2,1}``, ``G = 0``: the same minimiser, with the data operator scaled to
    the norm of the gradient when it is larger (``c = max(1, ||A|| / ||grad||)``, ``||A||`` by
    power iteration, ``||grad||^2 <= 4`` per spatial dim). Without that balance an operator with a
    large norm (CT: ``||A||^2`` in the thousands) sets the step alone and the TV part barely
    moves. Steps start at ``tau = sigma = 0.99 / ||K||`` with ``||K||^2 <= ||A||^2 / c^2 +
    ||grad||^2`` and are then balanced per item by the residuals below (Goldstein et al.: ``tau``
    grows and ``sigma`` shrinks while the primal residual is the larger, and vice versa, with
    ``tau sigma`` fixed and changes that fade within about 100 iterations), since the best fixed
    ratio ``tau / sigma`` depends on the problem and on ``lam``. Any linear physics works with no
    tuning of step sizes. Items of a batch are independent problems solved together, and the loop
    stops when the last of them reaches ``tol``: the others run on, so an item's result depends on
    the batch it comes in. Where that matters, call it per item, as ``diffinverse-reconstruct``
    does for its slices.

    The iteration stops when every item's relative primal and dual residuals (Goldstein et al.)
    are below ``tol``, checked every 10 iterations. The primal residual is ``||K^T (p, q)||``: the
    data term's gradient ``A^H p / c`` and the TV subgradient ``grad^T q`` cancel at the
    minimiser; it is taken relative to ``||A^H p / c|| + ||grad^T q|| + ||A^H y|| / c^2``. The dual
    residual is how far the last dual step is from the optimality condition ``K x in dF*(p, q)``,
    relative to ``||K x|| + ||y / c||``. The default ``tol`` stops the end-to-end tasks close to
    their minimisers, where no fixed iteration count suits them all; with a small ``lam`` the
    residuals understate the distance, so pass a smaller ``tol`` there (convergence measured in
    ``benchmarks/README.md``; command: ``benchmarks/operators/bench_tv_convergence.py``).

    With ``support``, the minimiser is sought among images that are zero outside it: ``G`` is the
    indicator of that set, whose prox multiplies the primal iterate by ``support``, and the primal
    residual counts the gradient inside it only. Pixels the data do not see and the TV term alone
    would fill in (e.g. where a coil-map set is zero) then cost nothing to converge.

    An operator may offer the same problem in a smaller data space: a method ``compact(y)``
    returning ``(physics', y')`` with ``||A' x - y'|| = ||A x - y||`` for every ``x`` (up to a
    constant) and ``A'^H y' = A^H y``, or ``None``. The loop then runs on ``(physics', y')``:
    the same iterates up to float rounding, with less work per iteration. The MRI operators with a
    line mask offer their sampled lines (:meth:`~diffinverse.operators.mri.MultiCoilMRI.compact`),
    which makes an iteration cheaper the fewer lines are sampled (``benchmarks/README.md``;
    command: ``benchmarks/operators/bench_tv_loop.py --full-kspace``).

    Args:
        y: measurements ``(B, ...)``.
        physics: a deepinv ``LinearPhysics`` (``A`` and ``A_adjoint``).
        lam: TV weight, in the units of ``||A x - y||^2 / TV(x)``: grows with the noise level and
            with the data scale of ``y`` (e.g. ``~ noise_sigma * ||A||`` for ``x`` on ``[0, 1]``).
        num_iters: most PDHG iterations (all of them when ``tol`` is 0).
        tol: relative residual at which to stop; 0 runs ``num_iters`` iterations.
        x_init: starting point, default ``A^H y`` scaled by the best step from 0 along it.
        spatial_dims: dims to take TV along (default all after the channel dim: 2 for
            ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``).
        support: 0/1 tensor broadcastable to ``A^H y``: where the image may be non-zero.
        power_iters: power iterations for ``||A||``.
        callback: called as ``callback(i, x)`` after every iteration.

    Returns:
        The reconstruction, shaped like ``A^H y``.

    Raises:
        TypeError: if ``physics`` is not linear, or ``y`` / ``x_init`` is not a tensor.
        ValueError: if ``lam`` or ``tol`` is negative or not finite, ``num_iters`` or
            ``power_iters`` is below 1, ``y`` / ``x_init`` contains NaN or infinite values, or
            ``x_init`` is not shaped like ``A^H y``, ``support`` does not broadcast to it.
        FloatingPointError: if the reconstruction is not finite.

    Warns:
        RuntimeWarning: if ``tol`` is positive and not reached within ``num_iters`` iterations.

    References:
        Chambolle & Pock, J. Math. Imaging Vis. 40 (2011), Algorithm 1.
        Goldstein, Li & Yuan, "Adaptive primal-dual splitting methods for statistical learning
        and image processing", NeurIPS 2015 (the residuals).
    """
    if not isinstance(physics, LinearPhysics):
        raise TypeError(f"tv_reconstruction needs a deepinv LinearPhysics, got {type(physics).__name__}")
    if not (math.isfinite(lam) and lam >= 0 and num_iters >= 1 and math.isfinite(tol) and tol >= 0
            and power_iters >= 1):
        raise ValueError(f"need finite lam >= 0 and tol >= 0, num_iters >= 1 and power_iters >= 1, got lam={lam}, "
                         f"num_iters={num_iters}, tol={tol}, power_iters={power_iters}")
    check_finite(y, "y")
    compact = getattr(physics, "compact", None)
    reduced = compact(y) if callable(compact) else None
    if reduced is not None:
        physics, y = reduced   # the same problem in a smaller data space (see the docstring)
    if x_init is None:
        # A^H y scaled by the exact line search from 0 along it, ||A^H y||^2 / ||A A^H y||^2 per item:
        # about A^H y for MRI (A^H A a projection), while for CT (||A||^2 in the thousands) the
        # unscaled backprojection is far off, and hundreds of iterations do not recover from it
        x = physics.A_adjoint(y)
        alpha = _sq_norms(x) / _sq_norms(physics.A(x)).clamp_min(1e-30)
        x = per_item(alpha, x) * x
    else:
        check_finite(x_init, "x_init")
        check_x_init(x_init, y, physics)
        x = x_init.clone()
    if support is not None:
        support = support.to(device=x.device, dtype=x.dtype)
        if torch.broadcast_shapes(support.shape, x.shape) != x.shape:
            raise ValueError(f"support of shape {tuple(support.shape)} does not broadcast to the image's "
                             f"{tuple(x.shape)}")
        x = x * support
    s = _spatial(x, spatial_dims)
    grad_norm_sq, a_norm_sq = 4.0 * s, operator_norm_squared(physics, x, num_iters=power_iters)
    c = max(1.0, (a_norm_sq / grad_norm_sq) ** 0.5)
    lam_c, y_c = lam / c**2, y / c
    # tau = sigma at first (tau sigma ||K||^2 = 0.98 < 1 for convergence), then balanced per item
    step = 0.99 / (a_norm_sq / c**2 + grad_norm_sq) ** 0.5
    tau = torch.full((x.shape[0],), step, dtype=x.real.dtype, device=x.device)
    sigma = tau.clone()
    adapt = _ADAPT_START
    p = torch.zeros_like(y)            # dual of the (scaled) data term, updated in place
    q = x.new_zeros((s, *x.shape))     # dual of the TV term

    def scaled(t: torch.Tensor) -> torch.Tensor:  # t / c, without a pass over t when c = 1 (MRI)
        return t / c if c != 1.0 else t

    # K x and K x_bar are kept (K is linear: K x_bar = 2 K x_new - K x), so that the residuals
    # cost no extra operator call
    ax, gx = scaled(physics.A(x)), _grad(x, s)
    # K x_bar and one scratch array in y's shape, reused: the data-sized arrays (one per coil for
    # multi-coil MRI) are the loop's largest, and allocating fresh ones cost more than their arithmetic
    ax_bar, gx_bar, scratch = ax.clone(), gx, torch.empty_like(y)
    # the residuals' fixed scales: the primal one's also where the two gradients vanish (lam = 0,
    # exact data)
    grad_scale, y_scale = _norms(physics.A_adjoint(y_c)) / c, _norms(y_c)
    residual = float("inf")
    for i in range(num_iters):
        # dual ascent: prox of sigma F* (data: closed form; TV: projection on |q| <= lam per pixel)
        sigma_p = per_item(sigma, p)
        # p <- (p + sigma (ax_bar - y)) / (1 + sigma); the old p is not needed again
        p.add_(torch.sub(ax_bar, y_c, out=scratch).mul_(sigma_p)).div_(1 + sigma_p)
        q_new = q + per_item(sigma, q[0]) * gx_bar
        if lam > 0:
            q_new = q_new / (_magnitude(q_new) / lam_c).clamp_min(1.0).unsqueeze(0).unsqueeze(2)
        else:
            q_new = torch.zeros_like(q_new)
        # primal descent (G = 0, or the support's indicator) and extrapolation with theta = 1
        data_grad, tv_grad = scaled(physics.A_adjoint(p)), _grad_adjoint(q_new, s)
        if support is not None:
            data_grad, tv_grad = data_grad * support, tv_grad * support
        x_new = x - per_item(tau, x) * (data_grad + tv_grad)
        ax_new, gx_new = scaled(physics.A(x_new)), _grad(x_new, s)
        # relative residuals (see the docstring), NaN where both sides are 0
        primal = _norms(data_grad + tv_grad) / (_norms(data_grad) + _norms(tv_grad) + grad_scale)
        # the data part, (p_old - p) / sigma + ax_bar - ax_new, is p + y - ax_new by p's update
        dual = ((_sq_norms(torch.add(p, y_c, out=scratch).sub_(ax_new))
                 + _sq_norms(((q - q_new) / per_item(sigma, q[0]) + gx_bar - gx_new).movedim(0, 1))).sqrt()
                / ((_sq_norms(ax_new) + _sq_norms(gx_new.movedim(0, 1))).sqrt() + y_scale))
        # balance them: the larger one gets the larger step, tau sigma unchanged (Goldstein et al.)
        factor = torch.where(primal > _ADAPT_BAND * dual, 1 / (1 - adapt),
                             torch.where(dual > _ADAPT_BAND * primal, 1 - adapt, 1.0))
        tau, sigma, adapt = tau * factor, sigma / factor, adapt * _ADAPT_DECAY
        ax_bar, gx_bar = torch.mul(ax_new, 2, out=ax_bar).sub_(ax), torch.mul(gx_new, 2).sub_(gx)
        x, q, ax, gx = x_new, q_new, ax_new, gx_new
        if callback is not None:
            callback(i, x)
        if tol > 0 and ((i + 1) % 10 == 0 or i + 1 == num_iters):  # a host synchronisation: not every time
            residual = torch.maximum(primal, dual).nan_to_num(0.0).max().item()
            if residual < tol:
                break
    else:
        if tol > 0:
            warnings.warn(f"tv_reconstruction stopped after num_iters={num_iters} iterations with a relative "
                          f"residual {residual:.2g} > tol={tol:g}: raise num_iters for a converged baseline",
                          RuntimeWarning, stacklevel=3)  # past the no_grad wrapper
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"tv_reconstruction diverged after {i + 1} iterations: its reconstruction contains "
                                 f"NaN or infinite values")
    return x
