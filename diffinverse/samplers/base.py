"""What every diffusion sampler shares: schedule, warm start, initial state, the loop, NFE count.

A sampler is configured once and then called like a deepinv reconstructor::

    sampler = DPS(prior, num_steps=200, zeta=1.0)
    x = sampler(y, physics, generator=g)                  # one posterior sample, shaped like x
    post = sampler.posterior(y, physics, num_samples=8)   # .samples (N, B, ...), .mean, .std

The pieces are composed, not inherited: the network call (counting, layout, bf16, compile) is a
:class:`~diffinverse.samplers.network.NetworkCall` (``sampler.network``); the loop below runs the
steps eagerly, or, for samplers that opt in, as replays of a captured CUDA graph
(:mod:`diffinverse.samplers.cuda_graph`); input checks live in :mod:`~diffinverse.samplers.checks`
and batching of several samples in :mod:`~diffinverse.samplers.posterior`.

The loop runs over a float64 grid of noise levels (VE convention, decreasing, last entry 0):
step ``i`` takes the state from ``sigmas[i]`` to ``sigmas[i + 1]``. Warm start
(Come-Closer-Diffuse-Faster): with ``sigma_start`` set, the reverse diffusion begins at
``sigma_start`` from ``x_init + sigma_start * n`` and runs only the part of the grid below
``sigma_start``. ``x_init`` defaults to a regularised reconstruction, Tikhonov by CG
(:func:`~diffinverse.samplers.data_consistency.tikhonov_start`), for a linear physics, and to
``physics.A_dagger(y)`` for any other.

Scale: step sizes that multiply ``A^H A`` are given relative to ``||A||^2``
(:func:`operator_scale`), so that one setting means the same on a CT projector (``||A||^2`` in
the thousands), a 4x super-resolution (1/16) and an orthonormal MRI operator (1). Divergence:
a run whose last state is not finite, or exceeds ``DIVERGENCE_FACTOR`` times the larger of 1 and
the warm start's largest magnitude (a cold start's state is noise at ``sigma_max``: there the
prior's ``data_range``), raises ``FloatingPointError`` naming the sampler's step size.

How to add a sampler: see the :mod:`diffinverse.samplers` package docstring.

References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022.
    Chung, Sim & Ye, "Come-Closer-Diffuse-Faster: Accelerating Conditional Diffusion Models for
    Inverse Problems through Stochastic Contraction", CVPR 2022.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
from deepinv.physics import LinearPhysics
from tqdm.auto import tqdm

from diffinverse.priors.schedules import karras
from diffinverse.samplers.adaptation import Adaptation, AdaptationRecord, adapted
from diffinverse.samplers.checks import (all_finite, check_batch, check_physics, check_x_init, checked_generator,
                                         state_like)
from diffinverse.operators.norm import operator_norm_squared
from diffinverse.samplers.cuda_graph import StepGraphs
from diffinverse.samplers.data_consistency import tikhonov_start
from diffinverse.samplers.network import NetworkCall, in_layout
from diffinverse.samplers.posterior import Posterior, sample_posterior

__all__ = ["DiffusionSampler", "Posterior", "DIVERGENCE_FACTOR", "data_fidelity_grad", "default_start", "operator_scale",
           "randn"]

DIVERGENCE_FACTOR = 10.0
"""A last state larger than this many times ``max(1, max |x| of the warm start)`` (of the prior's
``data_range`` for a cold start) has diverged (priors work on images whose magnitude is about 1)."""
_NON_FINITE = re.compile(r"non-finite|NaN|infinite")
"""What an operator's refusal of a non-finite input says (the samplers' diverged state)."""

Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]


def randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of ``shape`` with ``like``'s dtype and device, drawn from ``generator``.

    The noise is drawn on the generator's device (a CPU generator also serves a GPU tensor) so
    that a seed gives the same numbers whatever the device of ``like``.
    """
    device = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype, device=device).to(like.device)


def default_start(y: torch.Tensor, physics) -> torch.Tensor:
    """The samplers' default warm start: Tikhonov by CG
    (:func:`~diffinverse.samplers.data_consistency.tikhonov_start`) for a linear physics,
    ``physics.A_dagger(y)`` for any other; detached."""
    start = tikhonov_start(y, physics) if isinstance(physics, LinearPhysics) else physics.A_dagger(y)
    return start.detach()


def operator_scale(physics, like: torch.Tensor) -> float:
    """``||A||^2`` of a linear physics (:func:`~diffinverse.operators.operator_norm_squared`,
    at ``like``'s shape), 1 for any other; the unit in which the samplers' step sizes are given."""
    if not isinstance(physics, LinearPhysics):
        return 1.0
    scale = operator_norm_squared(physics, like)
    if not scale > 0:
        raise ValueError("the physics is the zero operator (||A|| = 0): there is nothing to reconstruct from")
    return scale


def data_fidelity_grad(x: torch.Tensor, y: torch.Tensor, physics) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``f(x) = ||y - A(x)||^2 / 2`` per batch item, and the residual ``y - A(x)``.

    For a ``LinearPhysics`` the gradient is ``A^H (A x - y)`` (no autograd through ``A``, so
    non-differentiable backends such as ASTRA work); for any other physics it is the
    vector-Jacobian product of ``A`` by autograd.

    Args:
        x: ``(B, ...)`` current estimate (not modified; its graph, if any, is not used).
        y: ``(B, ...)`` measurements.
        physics: a deepinv ``Physics``.

    Returns:
        ``(grad, residual)``: ``grad`` shaped like ``x``, ``residual`` shaped like ``y``. ``grad`` is
        a new tensor that aliases nothing else, so callers may update it in place.
    """
    x = x.detach()
    if isinstance(physics, LinearPhysics):
        residual = y - physics.A(x)
        return -physics.A_adjoint(residual), residual
    with torch.enable_grad():
        x = x.requires_grad_(True)
        residual = y - physics.A(x)
        (grad,) = torch.autograd.grad(0.5 * residual.pow(2).sum(), x)
    return grad, residual.detach()


class DiffusionSampler:
    """Base class of the diffusion samplers: schedule, warm start, initial state, loop, NFE count.

    Args:
        prior: the denoiser ``D(x, sigma) = E[x0 | x0 + sigma n = x]`` (a
            :class:`~diffinverse.priors.base.Prior` or any deepinv ``Denoiser`` with ``sigma_min``
            / ``sigma_max`` given here).
        num_steps: number of steps of the full (cold-start) grid.
        schedule: either a callable ``schedule(num_steps, sigma_min, sigma_max)`` returning a
            decreasing grid ending in 0 (default :func:`~diffinverse.priors.schedules.karras`), or
            an explicit 1-D tensor of noise levels (decreasing, last entry 0; ``num_steps`` is then
            ignored). Kept in float64.
        sigma_min, sigma_max: range of the grid, default ``prior.sigma_min`` / ``prior.sigma_max``.
        sigma_start: default warm-start level (``None``: cold start from pure noise at
            ``sigma_max``); a value passed to the call overrides it.
        progress: show a tqdm progress bar.
        callback: called after every step as ``callback(i, sigma, x, x0_hat)`` with the step
            index, the step's starting noise level (a float), the new state and the step's
            denoised estimate. Tensors are passed as they are: clone them to keep them (a sampler
            may update its state in place; under ``cuda_graph`` both are the graph's buffers).
        autocast, channels_last, compile: how the network is called
            (:class:`~diffinverse.samplers.network.NetworkCall`): bf16 autocast (off by default),
            channels-last layout for 4-D states (on by default), ``torch.compile`` (off).
        cuda_graph: capture one whole step (network, operator and update) as a CUDA graph and
            replay it at every step, for a state on a CUDA device, where the sampler supports it
            (:class:`~diffinverse.samplers.cuda_graph.StepGraphs`): one launch per step instead
            of hundreds, which pays off where small images leave the GPU bound by kernel launches.
            The physics and the network must be torch code without host synchronisation (not
            the ASTRA CT backend). Not combinable with ``compile``.
        adapt: test-time adaptation of the prior to the measurement during each run (LoRA
            adapters trained by Adam on the CG-data-consistent estimate's residual,
            :mod:`~diffinverse.samplers.adaptation`); needs a network prior and a linear physics.
            ``None`` (default): the prior as shipped. The shipped weights are never modified.
            Not combinable with ``cuda_graph`` or ``compile``.

    Attributes:
        network: the :class:`~diffinverse.samplers.network.NetworkCall` the steps evaluate.
        sigmas: the full float64 grid of noise levels (CPU), last entry 0.
        last_nfe: network evaluations of the last call (one evaluation = one call of the prior on
            the whole current batch, however many images it holds).
        last_adaptation: with ``adapt``, the :class:`~diffinverse.samplers.adaptation.AdaptationRecord`
            of the last call (adapted steps, losses, and the network forward and backward passes
            adaptation spent, which ``last_nfe`` does not count); else ``None``.
    """

    supports_cuda_graph: ClassVar[bool] = False
    noise_draws: ClassVar[int] = 1
    step_size_hint: ClassVar[str] = "the step size"
    """What to lower when a run diverges (named in the ``FloatingPointError``)."""

    def __init__(self, prior, *, num_steps: int = 100,
                 schedule: Callable[..., torch.Tensor] | torch.Tensor = karras,
                 sigma_min: float | None = None, sigma_max: float | None = None,
                 sigma_start: float | None = None, progress: bool = True,
                 callback: Callback | None = None, autocast: bool = False, channels_last: bool = True,
                 compile: bool | dict = False, cuda_graph: bool = False, adapt: Adaptation | None = None):
        if compile and cuda_graph:
            raise ValueError("give compile or cuda_graph, not both (torch.compile(mode='reduce-overhead') "
                             "replays CUDA graphs itself)")
        if cuda_graph and not self.supports_cuda_graph:
            raise ValueError(f"{type(self).__name__} does not support cuda_graph (its step is not capturable)")
        if adapt is not None and not isinstance(adapt, Adaptation):
            raise TypeError(f"adapt must be an Adaptation or None, got {type(adapt).__name__}")
        if adapt is not None and (cuda_graph or compile):
            raise ValueError("adapt is not available with cuda_graph or compile (the adapted network changes "
                             "its weights during the run)")
        self.network = NetworkCall(prior, autocast=autocast, channels_last=channels_last, compile=compile)
        self.prior = prior
        self.sigma_min = float(sigma_min if sigma_min is not None else prior.sigma_min)
        self.sigma_max = float(sigma_max if sigma_max is not None else prior.sigma_max)
        if isinstance(schedule, torch.Tensor):
            self.sigmas = _check_grid(schedule)
        elif callable(schedule):
            self.sigmas = _check_grid(schedule(num_steps, self.sigma_min, self.sigma_max))
        else:
            raise TypeError(f"schedule must be a callable or a tensor of sigmas, got {type(schedule).__name__}")
        self.sigma_start = sigma_start
        self.progress = progress
        self.callback = callback
        self._graphs = StepGraphs() if cuda_graph else None
        self._grid = None
        self.last_nfe = 0
        self.adapt = adapt
        self.last_adaptation: AdaptationRecord | None = None

    # -- what a sampler implements ---------------------------------------------------------

    def step(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, noise: torch.Tensor | None,
             y: torch.Tensor, physics, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One update from noise level ``sigma`` to ``sigma_next``; returns ``(x_next, x0_hat)``.

        Args:
            x: the state at ``sigma`` (the step may update it in place).
            sigma, sigma_next: 0-d tensors on the state's device, in the grid's precision.
            noise: a standard normal draw shaped like ``x`` (``(k, *x.shape)`` for
                ``noise_draws = k > 1``), or ``None`` where :meth:`draws_noise` says so.
            y, physics: the measurements and their forward model.
            state: the per-run state of :meth:`init_state`.
        """
        raise NotImplementedError

    def draws_noise(self, sigma: float, sigma_next: float) -> bool:
        """Whether the step from ``sigma`` to ``sigma_next`` uses a noise draw (default: every step)."""
        return True

    def init_x(self, y: torch.Tensor, physics, x_init: torch.Tensor | None, sigma0: float, warm: bool,
               generator: torch.Generator | None, x_shape: Sequence[int] | None) -> torch.Tensor:
        """Initial state at ``sigma0``.

        Cold start: ``sigma0 * n``, shaped like ``physics.A_adjoint(y)`` (or ``x_shape``). Warm
        start: ``x_init + sigma0 * n`` (Come-Closer-Diffuse-Faster).

        Args:
            y, physics: the measurements and their forward model.
            x_init: the warm-start image (set whenever ``warm``; may be set by the caller otherwise).
            sigma0: first noise level of the grid.
            warm: whether this is a warm start.
            generator: source of the noise.
            x_shape: the caller's ``x_shape`` (``None`` if not given).
        """
        if x_init is not None and not warm:
            raise ValueError("x_init is a warm start: give sigma_start too (the noise level to start from)")
        like = x_init if x_init is not None else state_like(y, physics, None, x_shape)
        noise = sigma0 * randn(like.shape, like, generator)
        return noise if x_init is None else x_init + noise

    def init_state(self, x: torch.Tensor, y: torch.Tensor, physics) -> dict[str, torch.Tensor | None] | None:
        """Per-run state handed to every :meth:`step` (default ``None``): ``None`` or a dict of
        tensors (or ``None`` values), updated in place by the steps. A sampler without
        ``supports_cuda_graph`` may keep other values in it (e.g. Python numbers)."""
        return None

    def finalize(self, x: torch.Tensor, state: Any):
        """Map the last state (in the standard layout, checked finite; not the graph's buffer
        under ``cuda_graph``) to what the call returns (default: the state itself)."""
        return x

    # -- shared machinery ------------------------------------------------------------------

    def step_noise(self, x: torch.Tensor, generator: torch.Generator, draws: bool) -> torch.Tensor | None:
        """A step's standard normal draw: shaped like ``x`` (``(k, *x.shape)`` for ``noise_draws =
        k``), or ``None`` where the step draws none (``draws``, from :meth:`draws_noise`)."""
        if not draws:
            return None
        return randn(x.shape if self.noise_draws == 1 else (self.noise_draws, *x.shape), x, generator)

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The prior's Tweedie mean ``D(x, sigma)``, counted as one network evaluation, returned in
        the state's layout (:class:`~diffinverse.samplers.network.NetworkCall`)."""
        return self.network(x, sigma)

    def state_format(self, x: torch.Tensor) -> torch.memory_format:
        """Memory layout of the state ``x`` during a run: the network's (channels-last for 4-D
        states when ``channels_last`` is on), which saves copies at every step."""
        return self.network.layout(x)

    @property
    def autocast(self) -> bool:
        """Whether the network runs under bf16 autocast."""
        return self.network.autocast

    @property
    def channels_last(self) -> bool:
        """Whether 4-D states are kept in channels-last layout."""
        return self.network.channels_last

    def schedule_for(self, sigma_start: float | None) -> torch.Tensor:
        """The float64 grid of a run: the full grid, or its part below ``sigma_start`` (warm start).

        Raises:
            ValueError: if ``sigma_start`` is not in ``(0, sigmas[0]]``.
        """
        if sigma_start is None:
            return self.sigmas
        top = float(self.sigmas[0])
        if not (math.isfinite(sigma_start) and 0 < sigma_start <= top):
            raise ValueError(f"sigma_start must be in (0, {top:g}] (the grid's largest sigma), got {sigma_start}")
        below = self.sigmas[self.sigmas < sigma_start]
        return torch.cat([self.sigmas.new_tensor([sigma_start]), below])

    def __call__(self, y: torch.Tensor, physics, *, generator: torch.Generator | None = None,
                 x_init: torch.Tensor | None = None, sigma_start: float | None = None,
                 x_shape: Sequence[int] | None = None):
        """Reconstruct: one sample per measurement.

        Args:
            y: measurements ``(B, ...)``, as returned by ``physics(x)``.
            physics: any deepinv ``Physics`` mapping ``x`` to ``y``.
            generator: source of all randomness; ``None`` draws a fresh seed (the global RNG is
                never used). The same seed on the same device gives the same result. On a GPU pass
                a generator on that device (``torch.Generator("cuda")``): a CPU generator's noise is
                drawn on the host and copied every step.
            x_init: warm-start image, shaped like ``x``; default Tikhonov by CG
                (:func:`~diffinverse.samplers.data_consistency.tikhonov_start`) for a linear
                physics, ``physics.A_dagger(y)`` for any other.
            sigma_start: warm-start noise level; default the one given at construction
                (``None``: cold start).
            x_shape: shape of ``x``, needed only for a nonlinear physics without ``A_adjoint``
                when ``x_init`` is not given.

        Returns:
            What :meth:`finalize` makes of the last state: for DPS and RED-Diff the
            reconstruction, shaped like ``x`` (e.g. ``physics.A_adjoint(y)``).

        Raises:
            TypeError: if ``generator`` is not a ``torch.Generator`` (or ``None``), or ``physics``
                has no forward operator ``A``.
            ValueError: if ``y`` is not a non-empty batch, ``y`` or ``x_init`` contains NaN or
                infinite values (checked before the first step; an operator may refuse them
                earlier, e.g. in ``A_dagger``), ``x_init`` is not shaped like ``A^H y`` (linear
                physics) or has another batch size than ``y``, ``x_shape`` is not the initial
                state's shape, or (from the prior) the state's dtype or device is not the network's.
            FloatingPointError: if the iteration diverged: the last state is not finite, or
                larger than ``DIVERGENCE_FACTOR`` times the larger of 1 and the warm start's
                largest magnitude (for a cold start: the prior's ``data_range``), or the physics
                refused a non-finite state during the run (the message names the step size to lower).
        """
        # the checks run on the inputs' device and are read before the first step: on a GPU the
        # set-up below is queued meanwhile instead of waiting for them
        check_batch(y)
        finite = {"y": all_finite(y, "y")}
        check_physics(physics)
        if x_init is not None:
            finite["x_init"] = all_finite(x_init, "x_init")
            check_x_init(x_init, y, physics)
        sigma_start = self.sigma_start if sigma_start is None else sigma_start
        levels = self.schedule_for(sigma_start).tolist()
        generator = checked_generator(generator, y.device)
        warm = sigma_start is not None
        if warm and x_init is None:
            x_init = default_start(y, physics)
        x = self.init_x(y, physics, x_init, levels[0], warm, generator, x_shape)
        if x_shape is not None and tuple(x.shape) != tuple(x_shape):
            raise ValueError(f"x_shape {tuple(x_shape)} is not the shape of the initial state, {tuple(x.shape)} "
                             f"(from x_init or physics.A_dagger(y))")
        x = in_layout(x, self.state_format(x))
        # the scale a result is judged by (read after the loop: no synchronisation here): the warm
        # start's, or for a cold start, whose state is noise at sigma_max, the prior's data range
        start_max = x.detach().abs().amax() if warm else torch.tensor(
            max(abs(float(v)) for v in getattr(self.prior, "data_range", (-1.0, 1.0))))
        state = self.init_state(x, y, physics)
        sigmas = self._device_grid(levels, x.device)
        draws = [self.draws_noise(s, s_next) for s, s_next in zip(levels[:-1], levels[1:])]
        for name, ok in finite.items():
            if not ok:
                raise ValueError(f"{name} contains NaN or infinite values")
        steps = tqdm(range(len(draws)), disable=not self.progress, desc=type(self).__name__)
        run = self._graphs.run if self._graphs is not None else _run_eagerly
        try:
            with adapted(self, y, physics, state) if self.adapt is not None else nullcontext():
                x, state, self.last_nfe = run(self, x, y, physics, state, sigmas, levels, draws, generator, steps)
        except ValueError as err:
            # the inputs were checked finite above: an operator that refuses a non-finite value
            # during the run was given the diverged state
            if not _NON_FINITE.search(str(err)):
                raise
            raise FloatingPointError(f"{type(self).__name__} diverged: its state became non-finite during the run "
                                     f"({err}); lower {self.step_size_hint}") from err
        # in the standard layout, and not the graph's buffer, which the next call overwrites
        x = x.clone(memory_format=torch.contiguous_format) if self._graphs is not None else \
            in_layout(x, torch.contiguous_format)
        self._check_converged(x, start_max, len(levels) - 1)
        return self.finalize(x, state)

    def posterior(self, y: torch.Tensor, physics, *, num_samples: int,
                  generator: torch.Generator | None = None, max_batch: int | None = None,
                  x_init: torch.Tensor | None = None, sigma_start: float | None = None,
                  x_shape: Sequence[int] | None = None,
                  physics_for_batch: Callable[[Any, int], Any] | None = None) -> Posterior:
        """Draw ``num_samples`` samples per measurement, batched through the network together.

        The ``B`` measurements are repeated sample-major (row ``s * B + b`` of a chunk is sample
        ``s`` of item ``b``) and run as one batch of up to ``max_batch`` images per network call;
        chunks run one after the other from the same generator. The samples are therefore
        distributed exactly as ``num_samples`` separate calls (not bit-identical to them).

        The physics is applied to the enlarged batch. This works unchanged for operators whose
        parameters are shared by the whole batch (one mask ``(H, W)``, one coil-map set, CT,
        blur kernels) and for ``B = 1`` with any operator whose per-item parameters broadcast.
        For per-item parameters and ``B > 1`` (masks ``(B, H, W)``, per-slice coil maps), pass
        ``physics_for_batch(physics, n)`` returning the operator for ``n`` stacked copies of the
        batch (e.g. ``lambda p, n: p.with_mask(p.mask.repeat(n, 1, 1))``).

        Args:
            y: measurements ``(B, ...)``.
            physics: the forward model of ``y``.
            num_samples: ``N >= 1`` samples per measurement.
            generator: source of all randomness (``None``: a fresh seed).
            max_batch: most images per network call (memory budget); default all ``N * B``
                at once. A chunk always holds at least one sample of every item.
            x_init, sigma_start, x_shape: as in :meth:`__call__` (``x_init`` is ``(B, ...)``).
            physics_for_batch: see above; ``None`` uses ``physics`` as it is.

        Returns:
            :class:`~diffinverse.samplers.posterior.Posterior` with ``samples (N, B, ...)``,
            ``mean`` and ``std`` ``(B, ...)``. ``last_nfe`` is then the total over all chunks.

        Raises:
            ValueError: if the physics does not accept the enlarged batch.
        """
        return sample_posterior(self, y, physics, num_samples=num_samples, generator=generator,
                                max_batch=max_batch, x_init=x_init, sigma_start=sigma_start, x_shape=x_shape,
                                physics_for_batch=physics_for_batch)

    def _check_converged(self, x: torch.Tensor, start_max: torch.Tensor, num_steps: int) -> None:
        """``FloatingPointError`` if the last state ``x`` is not finite or has grown by orders of
        magnitude beyond ``start_max`` (the warm start's largest magnitude or the prior's range) and 1."""
        name = type(self).__name__
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{name} diverged: its state contains NaN or infinite values after {num_steps} "
                                     f"steps; lower {self.step_size_hint}")
        largest, bound = x.abs().amax().item(), DIVERGENCE_FACTOR * max(1.0, start_max.item())
        if largest > bound:
            raise FloatingPointError(
                f"{name} diverged: after {num_steps} steps its state reaches |x| = {largest:.3g}, more than "
                f"{DIVERGENCE_FACTOR:g} times the warm start's largest magnitude (cold start: the prior's data "
                f"range; at least 1); lower {self.step_size_hint}")

    def _device_grid(self, levels: list[float], device: torch.device) -> torch.Tensor:
        """The run's noise levels on the state's device (float64, float32 where the device has no
        float64), kept for later calls with the same grid."""
        dtype = torch.float32 if device.type == "mps" else torch.float64
        if self._grid is None or self._grid[0] != (tuple(levels), device):
            self._grid = ((tuple(levels), device), torch.tensor(levels, dtype=dtype, device=device))
        return self._grid[1]


def _run_eagerly(sampler: DiffusionSampler, x, y, physics, state, sigmas: torch.Tensor, levels: Sequence[float],
                 draws: Sequence[bool], generator: torch.Generator, steps) -> tuple[torch.Tensor, Any, int]:
    """The loop: one :meth:`DiffusionSampler.step` per pair of noise levels; returns the last
    state, the per-run state and the number of network evaluations."""
    sampler.network.reset()
    layout = sampler.state_format(x)
    for i in steps:
        noise = sampler.step_noise(x, generator, draws[i])
        if sampler.adapt is not None:   # the adapted network trains at the step's first network call
            sampler.network.arm(i, levels[i])
        x, x0_hat = sampler.step(x, sigmas[i], sigmas[i + 1], noise, y, physics, state)
        x = in_layout(x, layout)   # the network's layout (no copy where the step kept it)
        if sampler.callback is not None:
            sampler.callback(i, levels[i], x, x0_hat)
    return x, state, sampler.network.nfe


def _check_grid(sigmas: torch.Tensor) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"a sigma grid must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all() or sigmas[-1] != 0 or (sigmas[:-1] <= 0).any():
        raise ValueError("a sigma grid must be finite and positive, with a final 0")
    if (sigmas[1:] >= sigmas[:-1]).any():
        raise ValueError("a sigma grid must be strictly decreasing")
    return sigmas
