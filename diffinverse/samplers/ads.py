"""Active Diffusion Subsampling (ADS): choose what to measure next from the disagreement of particles.

``N`` particles run one reverse diffusion together (each step is a step of a particle sampler,
DDS by default, with the measurements acquired so far). At ``num_acquisitions`` steps spread
evenly over a window of the run, the unmeasured candidate (a k-space line, a CT view, a pixel)
whose predicted measurements the particles disagree on most is measured next: with
``y_i = A_full(x0_hat_i)`` the particles' predicted full measurements and ``P_l`` the selection of
candidate ``l``'s entries, its estimated entropy is (Nolan et al. 2025, Eq. 8, the official code's
form, with a positive exponent)

    H_l = sum_i logsumexp_j ( ||P_l (y_i - y_j)||^2 / (2 s^2) )            (kernel="ads")

or the entropy estimate of the Gaussian mixture ``(1/N) sum_j N(y_j, s^2 I)`` evaluated at the
particles (a negative exponent; up to constants that do not depend on ``l`` when candidates
have equally many entries)

    H_l = -(1/N) sum_i logsumexp_j ( -||P_l (y_i - y_j)||^2 / (2 s^2) )     (kernel="gmm").

For large ``s`` both rank candidates by the particles' variance of ``P_l y``.

The particles' predictions come from their Tweedie estimates ``x0_hat_i = D(x_i, sigma)`` made
consistent with what is measured so far (``predict="consistent"``, the default): DDS's
data-consistency step (:func:`cg_data_consistency` from ``x0_hat_i``), again after every
measurement when several candidates are acquired at one step; or from the Tweedie estimates
themselves (``predict="tweedie"``, the paper's). The entropy should estimate a candidate's
uncertainty *given the measurements*; the network alone does not know them, so with the paper's
form a candidate that the operator ties to measured ones (a neighbouring line of a multi-coil scan
through the coil maps, a neighbouring CT view through the image) looks as uncertain as any other.
Where the operator ties no candidates together (single-coil lines, pixels) the two forms choose
alike.

``measure(mask)`` is
called once per acquisition with the new candidate's mask only, so that a retrospective run
(from fully sampled data) and a prospective one (a callback to a scanner) are the same call; its
results are added up, so the measurements of a mask must be zero where the mask is (fastMRI-style
zero-filled k-space, inpainting, a masked sinogram).

References:
    Nolan, Verhaeghe, van Gorp, Wijnen & van Sloun, "Active Diffusion Subsampling", TMLR 2025.
"""
from __future__ import annotations

import collections
import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from deepinv.physics import LinearPhysics
from tqdm.auto import tqdm

from diffinverse.samplers.base import DiffusionSampler, operator_scale
from diffinverse.samplers.checks import check_finite, checked_generator
from diffinverse.samplers.data_consistency import cg_data_consistency
from diffinverse.samplers.dds import GAMMA

__all__ = ["ActiveResult", "ActiveSubsampling", "ViewMaskedCT", "candidate_entropies", "ct_view_candidates",
           "kspace_line_candidates"]


@dataclass(frozen=True)
class ActiveResult:
    """What an active acquisition returns.

    Attributes:
        mean, std: ``(1, ...)`` the particles' mean and standard deviation at the end.
        particles: ``(N, ...)`` the final particles.
        mask: the final sampling mask (``initial_mask`` plus every acquired candidate), bool.
        order: the acquired candidates' ids, in acquisition order.
        entropies: ``(num_acquisitions, L)`` every candidate's estimated entropy at every
            acquisition (``-inf`` for candidates already measured).
        measurements: the measurements of ``mask`` (the sum of ``measure``'s results).
    """

    mean: torch.Tensor
    std: torch.Tensor
    particles: torch.Tensor
    mask: torch.Tensor
    order: tuple[int, ...]
    entropies: torch.Tensor
    measurements: torch.Tensor


_ENTROPY_CHUNK = 1 << 22
"""Entries (particles x measurements) of one float64 block of :func:`candidate_entropies`."""


def candidate_entropies(predicted: torch.Tensor, groups: torch.Tensor, num_candidates: int, *, s: float,
                        kernel: Literal["ads", "gmm"] = "ads") -> torch.Tensor:
    """Each candidate's estimated entropy from the particles' predicted measurements.

    Args:
        predicted: ``(N, ...)`` predicted full measurements of ``N`` particles (real; complex data
            as real channels).
        groups: long tensor shaped like one particle's measurements, ``predicted.shape[1:]``: the
            candidate id (``0 .. L-1``) of every entry, ``-1`` for entries that belong to none.
        num_candidates: ``L``.
        s: the kernel width, in measurement units.
        kernel: ``"ads"`` or ``"gmm"`` (see the module notes).

    Returns:
        ``(L,)`` float64 entropies.
    """
    if kernel not in ("ads", "gmm"):
        raise ValueError(f"kernel must be 'ads' or 'gmm', got {kernel!r}")
    if groups.shape != predicted.shape[1:]:
        raise ValueError(f"groups has shape {tuple(groups.shape)}, the measurements {tuple(predicted.shape[1:])}")
    axis = _grouping_axis(groups)
    if axis is None:
        d2 = _pair_distances(predicted, groups.to(predicted.device), num_candidates)
    else:
        d2 = _pair_distances_along(predicted, groups.to(predicted.device), num_candidates, axis)
    sign = 1.0 if kernel == "ads" else -1.0
    lse = torch.logsumexp(sign * d2 / (2 * s**2), dim=1)        # (N, L)
    return lse.sum(0) if kernel == "ads" else -lse.mean(0)


def _grouping_axis(groups: torch.Tensor) -> int | None:
    """The one axis along which the candidate ids vary (k-space columns, sinogram rows), or None."""
    varying = [d for d in range(groups.ndim)
               if groups.shape[d] > 1 and not torch.equal(groups, groups.narrow(d, 0, 1).expand_as(groups))]
    return varying[0] if len(varying) == 1 else None


def _pair_distances(predicted: torch.Tensor, groups: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """``d2[i, j, l] = ||P_l (y_i - y_j)||^2``, ``(N, N, L)`` float64, for any grouping: one particle
    ``i`` and a chunk of entries at a time (memory about N x CHUNK, whatever the measurements' size)."""
    n = predicted.shape[0]
    y, gid = predicted.reshape(n, -1), groups.reshape(-1)
    keep = gid >= 0
    y, gid = y[:, keep], gid[keep]
    d2 = torch.zeros(n, n, num_candidates, dtype=torch.float64, device=y.device)
    chunk = max(1, _ENTROPY_CHUNK // n)
    for start in range(0, y.shape[1], chunk):
        part, part_gid = y[:, start:start + chunk].double(), gid[start:start + chunk]
        for i in range(n):
            d2[i].index_add_(1, part_gid, (part[i] - part).square())
    return d2


def _pair_distances_along(predicted: torch.Tensor, groups: torch.Tensor, num_candidates: int,
                          axis: int) -> torch.Tensor:
    """:func:`_pair_distances` when the ids vary along one ``axis`` of the measurements only: per
    position ``e`` on that axis the Gram matrix ``G_e = Y_e Y_e^T`` of the particles (batched
    products over chunks of the other entries, memory about CHUNK float64s), ``||y_i - y_j||^2 =
    G_ii + G_jj - 2 G_ij`` in float64, then summed into the candidates."""
    n, size = predicted.shape[0], predicted.shape[axis + 1]
    y = predicted.movedim(axis + 1, -1).reshape(n, -1, size)                                 # (N, R, E)
    gid = groups.movedim(axis, -1).reshape(-1, size)[0]                                      # (E,)
    gram = torch.zeros(size, n, n, dtype=torch.float64, device=y.device)
    chunk = max(1, _ENTROPY_CHUNK // (n * size))
    for start in range(0, y.shape[1], chunk):
        part = y[:, start:start + chunk].double()
        gram += torch.einsum("nre,mre->enm", part, part)                                     # (E, N, N)
    sq = torch.diagonal(gram, dim1=1, dim2=2)                                                # (E, N)
    d2_e = (sq[:, :, None] + sq[:, None, :] - 2 * gram).clamp_min(0)
    keep = gid >= 0
    d2 = torch.zeros(num_candidates, n, n, dtype=torch.float64, device=y.device)
    d2.index_add_(0, gid[keep], d2_e[keep])
    return d2.permute(1, 2, 0)


def _warn_if_saturated(h: torch.Tensor, s: float) -> None:
    """Warn when the ``"gmm"`` entropies of several open candidates sit at their upper bound 0:
    the particles disagree on them by far more than ``s``, the estimate cannot rank them, and the
    choice among them falls to the lowest index."""
    tied = int((h == 0).sum())
    if tied > 1:
        warnings.warn(f"kernel='gmm' is saturated: {tied} candidates share the largest entropy (the particles "
                      f"disagree on them by far more than s={s:g}), so the lowest-numbered is taken; use a larger "
                      f"s, about the spread of the predicted measurements, or kernel='ads'",
                      RuntimeWarning, stacklevel=3)


def kspace_line_candidates(measurement_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase-encode lines (k-space columns, fastMRI's convention) as ADS candidates.

    Args:
        measurement_shape: one item's measurement shape ending in ``(H, W)``, e.g. ``(2, H, W)``
            single-coil or ``(2, N_coils, H, W)`` multi-coil k-space.

    Returns:
        ``(candidates, groups)``: ``(W, H, W)`` bool masks (candidate ``l`` = column ``l``) and the
        column of every measurement entry, shaped ``measurement_shape``.
    """
    if len(measurement_shape) < 2:
        raise ValueError(f"measurement_shape must end in (H, W), got {tuple(measurement_shape)}")
    h, w = measurement_shape[-2:]
    candidates = torch.zeros(w, h, w, dtype=torch.bool)
    candidates[torch.arange(w), :, torch.arange(w)] = True
    return candidates, torch.arange(w).expand(*measurement_shape).clone()


def ct_view_candidates(sinogram_shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection angles (sinogram rows) as ADS candidates.

    Args:
        sinogram_shape: ``(num_angles, num_detectors)`` of the full CT operator
            (:attr:`~diffinverse.operators.ct.CT.sinogram_shape`).

    Returns:
        ``(candidates, groups)``: ``(A, 1, A, D)`` bool masks (candidate ``l`` = view ``l``, shaped
        like one sinogram ``(1, A, D)``) and the view of every sinogram entry, ``(1, A, D)``.
    """
    if len(sinogram_shape) != 2 or min(sinogram_shape) < 1:
        raise ValueError(f"sinogram_shape must be (num_angles, num_detectors), got {tuple(sinogram_shape)}")
    a, d = sinogram_shape
    candidates = torch.zeros(a, 1, a, d, dtype=torch.bool)
    candidates[torch.arange(a), 0, torch.arange(a)] = True
    return candidates, torch.arange(a)[:, None].expand(1, a, d).clone()


class ViewMaskedCT(LinearPhysics):
    """A CT operator restricted to some of its views, with zero-filled sinograms.

    ``A x = m * ct.A(x)`` and ``A^T y = ct.A^T(m * y)`` with ``m`` the ``(1, A, D)`` 0/1 view mask,
    so sinograms keep the full operator's shape ``(B, 1, A, D)`` (the measurements of a mask are
    zero outside it, as :class:`ActiveSubsampling` adds them up). ``A_dagger`` is the full
    operator's filtered back-projection of the masked sinogram times ``A / (measured views)``:
    the quadrature weight of evenly spread measured views (exact for an equispaced subset).

    Args:
        ct: the full operator (:class:`~diffinverse.operators.ct.CT`), every candidate angle.
        mask: ``(1, A, D)`` or ``(A, D)`` bool or 0/1, whole rows (views).
    """

    def __init__(self, ct, mask: torch.Tensor):
        super().__init__()
        shape = tuple(ct.sinogram_shape)
        mask = mask.reshape(-1, *mask.shape[-2:])
        if tuple(mask.shape[-2:]) != shape or mask.shape[0] != 1:
            raise ValueError(f"mask must be {shape} or (1, *{shape}) (the sinogram), got {tuple(mask.shape)}")
        rows = mask[0].bool()
        if not torch.equal(rows, rows[:, :1].expand_as(rows)):
            raise ValueError("mask must select whole views (sinogram rows)")
        self.ct, self.view_mask = ct, mask.float()
        self.views = int(rows[:, 0].sum())

    def A(self, x, **kwargs):
        return self.ct.A(x) * self.view_mask.to(x)

    def A_adjoint(self, y, **kwargs):
        return self.ct.A_adjoint(y * self.view_mask.to(y))

    def A_dagger(self, y, **kwargs):
        scale = self.view_mask.shape[-2] / max(self.views, 1)
        return self.ct.A_dagger(y * self.view_mask.to(y)) * scale


class ActiveSubsampling:
    """Active Diffusion Subsampling with a pluggable particle sampler.

    Args:
        sampler: the particle sampler whose steps move the particles
            (:class:`~diffinverse.samplers.dds.DDS` for speed, :class:`~diffinverse.samplers.dps.DPS`
            for the paper's), with its grid, warm start and network settings.
        budget: candidates to acquire (``num_acquisitions``).
        num_particles: ``N`` (the paper: 16).
        window: ``(start, stop)`` fractions of the run's steps between which the acquisitions
            are spread evenly (:meth:`acquisition_steps`; a budget larger than the window's steps
            acquires several candidates at a step, those of highest entropy).
        kernel: the entropy estimate, ``"ads"`` (the paper's) or ``"gmm"``.
        s: the entropy kernel's width, in measurement units.
        predict: ``"consistent"`` or ``"tweedie"`` (the paper's; see the module notes).
        gamma, cg_iters: ``predict="consistent"``'s CG: data weight relative to ``||A||^2`` (of
            the measurements an acquisition step starts from) and iterations (DDS's defaults).
        progress: show a progress bar.

    An acquisition evaluates the network on the particles (their Tweedie estimates predict the
    measurements); a particle sampler whose step asks for the same estimate (DDS) gets it without
    a second evaluation, so ``last_nfe`` counts one pass per step; DPS (which differentiates
    through its own call) and RED-Diff (which denoises a re-noised mean) cost one more pass per
    acquisition step.

    References:
        Nolan et al., "Active Diffusion Subsampling", TMLR 2025.
    """

    def __init__(self, sampler: DiffusionSampler, *, budget: int, num_particles: int = 16,
                 window: tuple[float, float] = (0.0, 0.8), kernel: Literal["ads", "gmm"] = "ads",
                 s: float = 1.0, predict: Literal["tweedie", "consistent"] = "consistent", gamma: float = GAMMA,
                 cg_iters: int = 5, progress: bool = False):
        if not isinstance(sampler, DiffusionSampler):
            raise TypeError(f"sampler must be a DiffusionSampler (e.g. DDS), got {type(sampler).__name__}")
        if int(budget) != budget or budget < 1:
            raise ValueError(f"budget must be an integer >= 1, got {budget}")
        if int(num_particles) != num_particles or num_particles < 2:
            raise ValueError(f"num_particles must be an integer >= 2 (their disagreement is the entropy), "
                             f"got {num_particles}")
        if not 0 <= window[0] < window[1] <= 1:
            raise ValueError(f"window must be (start, stop) with 0 <= start < stop <= 1, got {window}")
        if kernel not in ("ads", "gmm"):
            raise ValueError(f"kernel must be 'ads' or 'gmm', got {kernel!r}")
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"s must be finite and > 0, got {s}")
        if predict not in ("tweedie", "consistent"):
            raise ValueError(f"predict must be 'tweedie' or 'consistent', got {predict!r}")
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be finite and > 0, got {gamma}")
        if int(cg_iters) != cg_iters or cg_iters < 1:
            raise ValueError(f"cg_iters must be an integer >= 1, got {cg_iters}")
        self.sampler, self.budget, self.num_particles = sampler, int(budget), int(num_particles)
        self.window, self.kernel, self.s, self.progress = tuple(window), kernel, float(s), progress
        self.predict, self.gamma, self.cg_iters = predict, float(gamma), int(cg_iters)
        self.last_nfe = 0

    def acquisition_steps(self, num_steps: int) -> list[int]:
        """The step (of ``num_steps``) before which each acquisition happens, ``budget`` entries.

        The official code's schedule, ``start + k * ((stop - start) // budget)``, where the window
        has at least ``budget`` steps; otherwise ``start + (k * (stop - start)) // budget``, so that
        several acquisitions share a step (the ``m`` candidates of highest entropy are acquired
        together, from the same particles).
        """
        start, stop = int(self.window[0] * num_steps), max(int(self.window[1] * num_steps), 1)
        start = min(start, stop - 1)
        if stop - start >= self.budget:
            interval = (stop - start) // self.budget
            steps = [start + k * interval for k in range(self.budget)]
        else:
            steps = [start + (k * (stop - start)) // self.budget for k in range(self.budget)]
        return [min(step, num_steps - 1) for step in steps]

    def __call__(self, measure: Callable[[torch.Tensor], torch.Tensor],
                 physics_for_mask: Callable[[torch.Tensor], object], candidates: torch.Tensor, *,
                 initial_mask: torch.Tensor, groups: torch.Tensor, x_shape: tuple[int, ...],
                 generator: torch.Generator | None = None) -> ActiveResult:
        """Acquire ``budget`` candidates while sampling; returns an :class:`ActiveResult`.

        Args:
            measure: ``measure(mask) -> y``, the measurements of ``mask`` (zero elsewhere), ``(1, ...)``;
                called once for ``initial_mask`` and once per acquisition, never twice for the
                same entries.
            physics_for_mask: ``physics_for_mask(mask)``: the forward model of a mask (zero-filled
                measurements shaped like ``measure``'s), applied to a batch of particles.
            candidates: ``(L, *mask.shape)`` bool: candidate ``l``'s part of a mask.
            initial_mask: bool mask measured before the first step (e.g. the k-space centre), not
                empty.
            groups: candidate id of every measurement entry (``-1``: none), shaped like ``y[0]``.
            x_shape: the shape of one image, ``(1, C, H, W)``.
            generator: source of all randomness.

        Raises:
            ValueError: if the budget exceeds the candidates not in ``initial_mask``, the initial
                mask is empty or already holds every candidate, or ``measure`` returns the wrong
                shape or non-finite values.
        """
        sampler = self.sampler
        generator = checked_generator(generator, candidates.device)
        candidates = candidates.bool()
        mask = initial_mask.bool().clone()
        if candidates.shape[1:] != mask.shape:
            raise ValueError(f"candidates have shape {tuple(candidates.shape)}, expected (L, *{tuple(mask.shape)})")
        open_ = ~(candidates & mask).flatten(1).any(1)
        if not mask.any():
            raise ValueError("initial_mask is empty: measure something first (e.g. the k-space centre or one "
                             "view); the particle sampler's data consistency needs a non-zero forward model")
        if not open_.any():
            raise ValueError("the initial mask already contains every candidate: nothing left to acquire")
        if self.budget > int(open_.sum()):
            raise ValueError(f"budget {self.budget} exceeds the {int(open_.sum())} candidates not yet measured")
        full = physics_for_mask(torch.ones_like(mask))
        y = self._measure(measure, mask, None)
        physics = physics_for_mask(mask)
        n = self.num_particles
        y_n = y.expand(n, *y.shape[1:])
        # the particle sampler's grid, cold or warm (from A_dagger of what is measured) as it is set
        levels = sampler.schedule_for(sampler.sigma_start).tolist()
        sigmas = sampler._device_grid(levels, y.device)
        warm = sampler.sigma_start is not None
        x = sampler.init_x(y_n, physics, physics.A_dagger(y_n) if warm else None, levels[0], warm, generator,
                           (n, *x_shape[1:]))
        at = collections.Counter(self.acquisition_steps(len(levels) - 1))
        order, entropies = [], []
        state = sampler.init_state(x, y_n, physics)
        sampler.network.reset()
        for i in tqdm(range(len(levels) - 1), disable=not self.progress, desc=type(self).__name__):
            sigma, x0_hat = sigmas[i], None
            if i in at:
                with torch.no_grad():
                    x0_hat = sampler.denoise(x, sigma)
                # the CG weight's unit, ||A||^2 of what the step starts from, kept for its later picks
                scale = operator_scale(physics, x0_hat) if self.predict == "consistent" else 1.0
                for k in range(at[i]):          # the at[i] highest entropies, one measurement each
                    if k and self.predict == "consistent":   # conditioned on this step's picks too
                        physics = physics_for_mask(mask)
                    if k == 0 or self.predict == "consistent":
                        h = self._entropies(x0_hat, y, physics, scale, full, groups, len(candidates), open_)
                    best = int(h.argmax())
                    entropies.append(h.clone())
                    order.append(best)
                    open_[best] = False
                    h[best] = -math.inf
                    y = self._measure(measure, candidates[best], y)
                    mask |= candidates[best]
                physics = physics_for_mask(mask)
                y_n = y.expand(n, *y.shape[1:])
                state = sampler.init_state(x, y_n, physics)
            noise = sampler.step_noise(x, generator, sampler.draws_noise(levels[i], levels[i + 1]))
            with _reused_estimate(sampler, x, sigma, x0_hat):
                x, _ = sampler.step(x, sigma, sigmas[i + 1], noise, y_n, physics, state)
        self.last_nfe = sampler.network.nfe
        x = x.detach()
        return ActiveResult(mean=x.mean(0, keepdim=True), std=x.std(0, keepdim=True), particles=x, mask=mask,
                            order=tuple(order), entropies=torch.stack(entropies), measurements=y)

    def _entropies(self, x0_hat: torch.Tensor, y: torch.Tensor, physics, scale: float, full, groups: torch.Tensor,
                   num_candidates: int, open_: torch.Tensor) -> torch.Tensor:
        """``(L,)`` every candidate's entropy from the particles' estimates (``-inf`` where measured);
        ``scale``: the unit of the CG weight ``gamma`` (``||A||^2``)."""
        with torch.no_grad():
            if self.predict == "consistent":
                aty = physics.A_adjoint(y.expand(x0_hat.shape[0], *y.shape[1:]))
                x0_hat = cg_data_consistency(x0_hat, aty, physics, num_iters=self.cg_iters, gamma=self.gamma / scale)
            h = candidate_entropies(full.A(x0_hat), groups, num_candidates, s=self.s, kernel=self.kernel)
        h = torch.where(open_.to(h.device), h, torch.full_like(h, -math.inf))
        if self.kernel == "gmm":
            _warn_if_saturated(h, self.s)
        return h

    @staticmethod
    def _measure(measure, mask: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        new = measure(mask)
        if not isinstance(new, torch.Tensor):
            raise TypeError(f"measure must return a tensor, got {type(new).__name__}")
        if y is not None and new.shape != y.shape:
            raise ValueError(f"measure returned shape {tuple(new.shape)}, earlier measurements have {tuple(y.shape)}")
        check_finite(new, "measure's result")
        return new if y is None else y + new


@contextlib.contextmanager
def _reused_estimate(sampler: DiffusionSampler, x: torch.Tensor, sigma: torch.Tensor,
                     x0_hat: torch.Tensor | None) -> Iterator[None]:
    """Within the block, ``sampler.denoise(x, sigma)`` with this very ``x`` and ``sigma`` returns
    ``x0_hat`` (the acquisition's Tweedie estimate of the same state) instead of evaluating the
    network again; other calls (DPS's, on a copy of ``x`` that requires grad) evaluate it."""
    if x0_hat is None:
        yield
        return
    evaluate = sampler.denoise

    def denoise(x_, sigma_):
        return x0_hat if x_ is x and sigma_ is sigma else evaluate(x_, sigma_)

    sampler.denoise = denoise
    try:
        yield
    finally:
        del sampler.denoise
