"""What every diffusion sampler shares: schedule, initial state, the loop, NFE counting, batching.

A sampler is configured once and then called like a deepinv reconstructor::

    sampler = DPS(prior, num_steps=200, zeta=1.0)
    x = sampler(y, physics, generator=g)                  # one posterior sample, shaped like x
    post = sampler.posterior(y, physics, num_samples=8)   # .samples (N, B, ...), .mean, .std

A subclass implements only its per-step update :meth:`DiffusionSampler.step` and the step's
scalars :meth:`~DiffusionSampler.coefficients` (and, where it needs them, the hooks
:meth:`~DiffusionSampler.draws_noise`, :meth:`~DiffusionSampler.init_x`,
:meth:`~DiffusionSampler.init_state` and :meth:`~DiffusionSampler.finalize`); this module owns the
rest. The loop runs over a float64 grid of noise levels ``sigmas`` (VE convention, decreasing, last
entry 0): step ``i`` takes the state from ``sigmas[i]`` to ``sigmas[i + 1]``.

A step sees its scalars as a row of a table on the state's device (computed once per run on the
host, in float64) and its noise drawn by the loop, so that its tensor operations are the same at
every step: that is what lets ``cuda_graph=True`` capture one step as a CUDA graph and replay it
(:mod:`diffinverse.samplers.cuda_graph`), with results equal to the eager loop's.

Warm start (Come-Closer-Diffuse-Faster): with ``sigma_start`` set, the reverse diffusion begins
at ``sigma_start`` from ``x_init + sigma_start * n`` (``x_init`` defaults to the baseline
``physics.A_dagger(y)``, e.g. zero-filled/SENSE for MRI, FBP for CT) and runs only the part of the
``num_steps`` grid below ``sigma_start``: fewer network evaluations, and a start that already
contains the measured information.

The state ``x`` has the shape of ``physics.A_adjoint(y)`` (for a nonlinear physics without an
adjoint, give ``x_init`` or ``x_shape``), so a sampler works for any operator. Gradients are never
switched off around the whole loop: each sampler enables them only where its update needs them.

References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022.
    Chung, Sim & Ye, "Come-Closer-Diffuse-Faster: Accelerating Conditional Diffusion Models for
    Inverse Problems through Stochastic Contraction", CVPR 2022.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from deepinv.physics import LinearPhysics
from tqdm.auto import tqdm

from diffinverse.priors.base import Prior
from diffinverse.priors.schedules import karras
from diffinverse.samplers.cuda_graph import StepGraphs, sampler_settings

__all__ = ["DiffusionSampler", "Posterior", "data_fidelity_grad", "in_layout", "randn", "same_layout"]

Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class Posterior:
    """Samples of a posterior and their pixel-wise moments.

    Attributes:
        samples: ``(N, B, ...)``: ``N`` samples for each of the ``B`` measurements, each shaped
            like the reconstruction ``x`` of one item.
        mean: ``(B, ...)`` sample mean (the MMSE estimate when the samples are exact).
        std: ``(B, ...)`` sample standard deviation (unbiased, ``N - 1`` in the denominator;
            zeros when ``N = 1``).
    """

    samples: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_samples(cls, samples: torch.Tensor) -> Posterior:
        """Build from ``samples: (N, B, ...)``."""
        n = samples.shape[0]
        std = samples.std(dim=0) if n > 1 else torch.zeros_like(samples[0])
        return cls(samples=samples, mean=samples.mean(dim=0), std=std)


def randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of ``shape`` with ``like``'s dtype and device, drawn from ``generator``.

    The noise is drawn on the generator's device (a CPU generator also serves a GPU tensor) so
    that a seed gives the same numbers whatever the device of ``like``.
    """
    device = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype, device=device).to(like.device)


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
        a new tensor that aliases nothing else, so callers may update it in place (RED-Diff does).
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
    """Base class of the diffusion samplers: schedule, initial state, loop, NFE count, batching.

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
            denoised estimate. Tensors are passed as they are: clone them to keep them (RED-Diff
            updates its state in place, and its estimate is an inference tensor, read-only until
            cloned; under ``cuda_graph`` both are the graph's buffers, overwritten by the next step).
        autocast: run the network under bf16 autocast; its output is cast back to the state's
            dtype, and everything else stays in that dtype. Worthwhile where the hardware has bf16
            units (CPUs with AVX512-BF16 or AMX, recent GPUs): on 2 cores of such a CPU, over the
            13 end-to-end tasks at 64x64, RED-Diff ran 1.50-1.64x and DPS 1.17-1.39x as fast,
            with PSNR within 0.012 dB and SSIM within 0.0003 of float32's
            (``benchmarks/bench_sampler_option.py``). On that CPU a bf16 forward+backward (DPS)
            was 1.08-1.19x faster per call with ``channels_last=False``, whereas float32 calls and
            bf16 forward calls were faster channels-last (``benchmarks/bench_network_call.py
            --autocast``). Off by default: float32 results, on any hardware.
        channels_last: hand the network its input in channels-last memory layout (4-D states
            only; default on); convolutions then run in NHWC. Same numbers up to float rounding;
            measured 1.04-1.17x faster per call on a 2-core CPU (``benchmarks/bench_network_call.py``).
            1-channel images get channels-last strides too (:func:`in_layout`), although their
            standard layout is contiguous in both. Turn it off for a denoiser that needs a
            standard-layout input (e.g. one calling ``.view`` on it). Its output is returned in
            the standard layout either way.
        compile: ``torch.compile`` the prior for the network calls (``True``, or a dict of
            ``torch.compile`` keyword arguments). Opt-in for GPUs: measured on CPU, compiled
            forward+backward ran at 0.65x the speed of eager mode. The first call compiles.
        cuda_graph: capture one whole step (network, operator and update) as a CUDA graph and
            replay it at every step: one launch per step instead of hundreds, for a state on a
            CUDA device (:class:`~diffinverse.samplers.cuda_graph.StepGraphs`). Worthwhile where
            the GPU is bound by kernel launches (small images and batches): on an H200 at
            64x64, batch 4, 20 steps, DPS ran 5.5x and RED-Diff 5.0x faster than eagerly, at
            256x256 1.06x and 1.05x (``benchmarks/README.md``). The first call for
            a given shape, physics and network captures the step (the cost of about four eager
            steps); later calls with the same ones replay it. The physics and the network must be
            capturable (torch operations only, no host synchronisation: not the ASTRA CT backend)
            and keep their tensors as attributes, which are then read at their addresses of the
            capture (changes in place are seen; a reassigned tensor makes it capture anew).
            Not combinable with ``compile``.

    Attributes:
        last_nfe: number of network evaluations of the last call (one evaluation = one call of
            the prior on the whole current batch, however many images it holds).
    """

    def __init__(self, prior, *, num_steps: int = 100,
                 schedule: Callable[..., torch.Tensor] | torch.Tensor = karras,
                 sigma_min: float | None = None, sigma_max: float | None = None,
                 sigma_start: float | None = None, progress: bool = True,
                 callback: Callback | None = None, autocast: bool = False, channels_last: bool = True,
                 compile: bool | dict = False, cuda_graph: bool = False):
        if not callable(prior):
            raise TypeError(f"prior must be a denoiser callable as prior(x, sigma), got {type(prior).__name__}")
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
        self.autocast = autocast
        self.channels_last = channels_last
        if compile and cuda_graph:
            raise ValueError("give compile or cuda_graph, not both (torch.compile(mode='reduce-overhead') "
                             "replays CUDA graphs itself)")
        self._network = prior
        if compile:
            self._network = torch.compile(prior, **(compile if isinstance(compile, dict) else {}))
        self._graphs = StepGraphs() if cuda_graph else None
        self._table_cache = None
        self.last_nfe = 0
        self._nfe = 0

    # -- what subclasses implement ---------------------------------------------------------

    def step(self, x: torch.Tensor, sigma: float | torch.Tensor, scalars: torch.Tensor, noise: torch.Tensor | None,
             y: torch.Tensor, physics, state: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One update from noise level ``sigma`` to the next; returns ``(x_next, x0_hat)``.

        Args:
            x: the state at ``sigma`` (under ``cuda_graph``, a fixed buffer: update it in place or
                return a new tensor, not a view of it).
            sigma: the step's noise level for :meth:`denoise`: a float, or under ``cuda_graph`` a
                0-d tensor on the device.
            scalars: ``(1 + m,)`` tensor on the state's device: ``sigma`` and the ``m`` scalars of
                :meth:`coefficients`. Use them as tensors (``torch.addcmul``, ``torch.lerp``),
                not as Python numbers, so that the step's operations do not depend on the step.
            noise: a standard normal draw shaped like ``x`` where :meth:`draws_noise` says so,
                else ``None`` (under ``cuda_graph``, a stale draw that the step's scalars weigh
                by zero: a step must not branch on ``noise is None`` in a way its scalars do not).
            y, physics: the measurements and their forward model.
            state: the per-run state of :meth:`init_state`.
        """
        raise NotImplementedError

    def coefficients(self, sigma: float, sigma_next: float, x: torch.Tensor, y: torch.Tensor) -> tuple[float, ...]:
        """The scalars a step needs besides ``sigma``, computed on the host in float64.

        ``x`` and ``y`` are given for their sizes only. The result may depend only on the noise
        levels, those sizes and the sampler's plain settings (numbers, strings, tuples): a sampler
        keeps its table for later calls with the same ones. Default: none.
        """
        return ()

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
        like = x_init if x_init is not None else _state_like(y, physics, None, x_shape)
        noise = sigma0 * randn(like.shape, like, generator)
        return noise if x_init is None else x_init + noise

    def init_state(self, x: torch.Tensor, y: torch.Tensor, physics) -> dict[str, torch.Tensor | None] | None:
        """Per-run state handed to every :meth:`step` (default ``None``): ``None`` or a dict of
        tensors (or ``None`` values), updated in place by the steps."""
        return None

    def finalize(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        """Map the last state to the returned reconstruction (default: unchanged)."""
        return x

    # -- shared machinery ------------------------------------------------------------------

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The prior's Tweedie mean ``D(x, sigma)``, counted as one network evaluation.

        ``sigma`` is a float, or (in a captured step) a 0-d tensor on ``x``'s device, already
        checked on the host as part of the grid. The network gets ``x`` in the state's layout
        (:meth:`state_format`), and its output is returned in that layout, whatever layout the
        network computed in.
        """
        self._nfe += 1
        layout = self.state_format(x)
        x = in_layout(x, layout)
        if not self.autocast:
            return in_layout(self._call_network(x, sigma), layout)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return in_layout(self._call_network(x, sigma).to(x.dtype), layout)

    def state_format(self, x: torch.Tensor) -> torch.memory_format:
        """Memory layout of the state ``x`` during a run: channels-last for 4-D states when
        ``channels_last`` is on, else the standard one.

        Keeping the state in the network's layout saves the copies into and out of it at every
        step, and those inside operators that keep their input's layout (the MRI operators); the
        reconstruction is returned in the standard layout.
        """
        return torch.channels_last if self.channels_last and x.ndim == 4 else torch.contiguous_format

    def _call_network(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        if not isinstance(sigma, torch.Tensor):
            return self._network(x, sigma)
        # a device tensor: no checks that would read it back to the host (a captured step cannot)
        sigma = sigma.expand(x.shape[0])
        if isinstance(self.prior, Prior):
            self.prior.check_input(x)
            return self.prior.denoise(x, sigma)
        return self._network(x, sigma)

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

    def _scalar_table(self, levels: list[float], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
        """The run's scalar table (one row per step: ``sigma`` and :meth:`coefficients`, on
        ``x``'s device) and which steps draw noise; the last ones are kept for the next call with
        the same grid, sizes and settings (a table is built on the host and copied to the device)."""
        key = (tuple(levels), x.shape, y.shape, x.dtype, x.device, sampler_settings(self))
        if self._table_cache is None or self._table_cache[0] != key:
            pairs = list(zip(levels[:-1], levels[1:]))
            table = torch.tensor([(s, *self.coefficients(s, s_next, x, y)) for s, s_next in pairs],
                                 dtype=x.dtype, device=x.device)
            self._table_cache = (key, table, [self.draws_noise(s, s_next) for s, s_next in pairs])
        return self._table_cache[1:]

    def __call__(self, y: torch.Tensor, physics, *, generator: torch.Generator | None = None,
                 x_init: torch.Tensor | None = None, sigma_start: float | None = None,
                 x_shape: Sequence[int] | None = None) -> torch.Tensor:
        """Reconstruct: one sample per measurement.

        Args:
            y: measurements ``(B, ...)``, as returned by ``physics(x)``.
            physics: any deepinv ``Physics`` mapping ``x`` to ``y``.
            generator: source of all randomness; ``None`` draws a fresh seed (the global RNG is
                never used). The same seed on the same device gives the same result. On a GPU pass
                a generator on that device (``torch.Generator("cuda")``): a CPU generator's noise is
                drawn on the host and copied every step (RED-Diff's loop overhead on an H200 at
                64x64: 1.26 against 1.10, ``benchmarks/gpu_checks.py``).
            x_init: warm-start image, shaped like ``x``; default ``physics.A_dagger(y)``.
            sigma_start: warm-start noise level; default the one given at construction
                (``None``: cold start).
            x_shape: shape of ``x``, needed only for a nonlinear physics without ``A_adjoint``
                when ``x_init`` is not given.

        Returns:
            The reconstruction, shaped like ``x`` (e.g. ``physics.A_adjoint(y)``).

        Raises:
            TypeError: if ``generator`` is not a ``torch.Generator`` (or ``None``), or ``physics``
                has no forward operator ``A``.
            ValueError: if ``y`` is not a non-empty batch, ``y`` or ``x_init`` contains NaN or
                infinite values (checked before the first step; an operator may refuse them
                earlier, e.g. in ``A_dagger``), ``x_init`` is not shaped like ``A^H y`` (linear
                physics) or has another batch size than ``y``, ``x_shape`` is not the initial
                state's shape, or (from the prior) the state's dtype or device is not the network's.
            FloatingPointError: if the reconstruction is not finite (the iteration diverged).
        """
        # the checks run on the inputs' device and are read before the first step: on a GPU the
        # set-up below is queued meanwhile instead of waiting for them
        _check_batch(y)
        finite = {"y": _all_finite(y, "y")}
        _check_physics(physics)
        if x_init is not None:
            finite["x_init"] = _all_finite(x_init, "x_init")
            check_x_init(x_init, y, physics)
        sigma_start = self.sigma_start if sigma_start is None else sigma_start
        levels = self.schedule_for(sigma_start).tolist()
        generator = _generator(generator, y.device)
        warm = sigma_start is not None
        if warm and x_init is None:
            x_init = physics.A_dagger(y).detach()
        x = self.init_x(y, physics, x_init, levels[0], warm, generator, x_shape)
        if x_shape is not None and tuple(x.shape) != tuple(x_shape):
            raise ValueError(f"x_shape {tuple(x_shape)} is not the shape of the initial state, {tuple(x.shape)} "
                             f"(from x_init or physics.A_dagger(y))")
        x = in_layout(x, self.state_format(x))
        state = self.init_state(x, y, physics)
        table, draws = self._scalar_table(levels, x, y)
        for name, ok in finite.items():
            if not ok:
                raise ValueError(f"{name} contains NaN or infinite values")
        steps = tqdm(range(len(draws)), disable=not self.progress, desc=type(self).__name__)
        if self._graphs is not None:
            x, state, self.last_nfe = self._graphs.run(self, x, y, physics, state, table, draws, generator,
                                                       steps, levels)
        else:
            self._nfe = 0
            for i in steps:
                noise = randn(x.shape, x, generator) if draws[i] else None
                x, x0_hat = self.step(x, levels[i], table[i], noise, y, physics, state)
                if self.callback is not None:
                    self.callback(i, levels[i], x, x0_hat)
            self.last_nfe = self._nfe
        x = self.finalize(x, state)
        # in the standard layout, and not the graph's buffer, which the next call overwrites
        x = x.clone(memory_format=torch.contiguous_format) if self._graphs is not None else \
            in_layout(x, torch.contiguous_format)
        if not torch.isfinite(x).all():
            raise FloatingPointError(
                f"{type(self).__name__} diverged: its reconstruction contains NaN or infinite values after "
                f"{len(levels) - 1} steps (try a smaller step size, e.g. zeta or lr, or more steps)")
        return x

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
            :class:`Posterior` with ``samples (N, B, ...)``, ``mean`` and ``std`` ``(B, ...)``.
            ``last_nfe`` is then the total number of network calls over all chunks.

        Raises:
            ValueError: if the physics does not accept the enlarged batch.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        _check_batch(y)
        generator = _generator(generator, y.device)
        _check_physics(physics)
        b = y.shape[0]
        per_chunk = num_samples if max_batch is None else max(1, min(num_samples, max_batch // b))
        sigma_start = self.sigma_start if sigma_start is None else sigma_start
        if sigma_start is not None and x_init is None:
            x_init = physics.A_dagger(y).detach()
        like = _state_like(y, physics, x_init, x_shape)
        chunks, total_nfe = [], 0
        for start in range(0, num_samples, per_chunk):
            n = min(per_chunk, num_samples - start)
            phys_n = physics if physics_for_batch is None else physics_for_batch(physics, n)
            _check_physics(phys_n)
            y_n = _repeat(y, n)
            _check_batch_physics(phys_n, y_n, like, n)
            x = self(y_n, phys_n, generator=generator, sigma_start=sigma_start,
                     x_init=None if x_init is None else _repeat(x_init, n),
                     x_shape=(n * b, *like.shape[1:]))
            chunks.append(x.detach().reshape(n, b, *x.shape[1:]))
            total_nfe += self.last_nfe
        self.last_nfe = total_nfe
        return Posterior.from_samples(torch.cat(chunks))


def _check_grid(sigmas: torch.Tensor) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"a sigma grid must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all() or sigmas[-1] != 0 or (sigmas[:-1] <= 0).any():
        raise ValueError("a sigma grid must be finite and positive, with a final 0")
    if (sigmas[1:] >= sigmas[:-1]).any():
        raise ValueError("a sigma grid must be strictly decreasing")
    return sigmas


def in_layout(t: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``t`` with the strides of ``layout`` (``torch.contiguous_format`` or, for 4-D tensors,
    ``torch.channels_last``); a copy only if they differ.

    Unlike ``t.contiguous(memory_format=layout)`` this also restrides a tensor that is contiguous
    in both layouts, such as a 1-channel image ``(B, 1, H, W)``: convolutions pick their layout
    from the strides, so a 1-channel input in standard strides would keep a whole network in
    NCHW whatever the sampler asked for.
    """
    if layout == torch.channels_last and t.ndim != 4:
        raise ValueError(f"channels_last needs a 4-D tensor (B, C, H, W), got shape {tuple(t.shape)}")
    order = (0, 2, 3, 1) if layout == torch.channels_last else range(t.ndim)   # outermost to innermost
    strides, step = [0] * t.ndim, 1
    for d in reversed(order):
        strides[d] = step
        step *= max(t.shape[d], 1)
    return t if t.stride() == tuple(strides) else torch.empty_like(t, memory_format=layout).copy_(t)


def same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` with ``like``'s strides (a copy only if they differ): for updates that pair the
    entries of tensors by memory position, such as the fused Adam kernel."""
    return t if t.stride() == like.stride() else torch.empty_like(like).copy_(t)


def _all_finite(t: torch.Tensor, name: str) -> torch.Tensor:
    """Whether ``t`` holds only finite values, as a 0-d bool tensor on its device (not read back:
    no host synchronisation); raises ``TypeError`` unless ``t`` is a tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return torch.isfinite(t).all()


def _check_batch(y: torch.Tensor) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim == 0 or y.shape[0] == 0:
        raise ValueError(f"y must be a batch (B, ...) with B >= 1, got shape {tuple(y.shape)}")


def _check_physics(physics) -> None:
    if not callable(getattr(physics, "A", None)):
        raise TypeError(f"physics must be a deepinv Physics (with a forward operator A), got {type(physics).__name__}")


def check_x_init(x_init: torch.Tensor, y: torch.Tensor, physics) -> None:
    """Raise ``ValueError`` unless ``x_init`` has ``y``'s batch size and, for a linear physics, the
    shape of ``A^H y`` (a nonlinear physics checks its input itself, at its first call)."""
    if x_init.shape[0] != y.shape[0]:
        raise ValueError(f"x_init has batch size {x_init.shape[0]}, y has {y.shape[0]}")
    if isinstance(physics, LinearPhysics):
        with torch.no_grad():
            shape = tuple(physics.A_adjoint(y).shape)
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, but the physics' images (A^H y) "
                             f"have shape {shape}")


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ``TypeError`` unless ``t`` is a tensor, ``ValueError`` if it holds NaN or infinite values."""
    if not _all_finite(t, name):
        raise ValueError(f"{name} contains NaN or infinite values")


def _generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """``generator`` itself, or a fresh one on ``device`` when it is ``None``."""
    if generator is None:
        generator = torch.Generator(device=device)
        generator.seed()  # non-deterministic seed from the OS; the global RNG is untouched
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
                        f"got {type(generator).__name__}")
    return generator


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.repeat(n, *([1] * (t.ndim - 1)))


def _state_like(y: torch.Tensor, physics, x_init: torch.Tensor | None,
                x_shape: Sequence[int] | None) -> torch.Tensor:
    """An (uninitialised) tensor with the state's shape, dtype and device."""
    if x_init is not None:
        check_x_init(x_init, y, physics)
        return torch.empty_like(x_init)
    if x_shape is not None:
        return torch.empty(tuple(x_shape), dtype=y.dtype if y.is_floating_point() else torch.float32,
                           device=y.device)
    if not hasattr(physics, "A_adjoint"):
        raise ValueError(f"{type(physics).__name__} has no A_adjoint: give x_init or x_shape")
    with torch.no_grad():
        return torch.empty_like(physics.A_adjoint(y))


def _check_batch_physics(physics, y_n: torch.Tensor, like: torch.Tensor, n: int) -> None:
    x = torch.zeros(n * like.shape[0], *like.shape[1:], dtype=like.dtype, device=like.device)
    try:
        with torch.no_grad():
            shape = tuple(physics.A(x).shape)
    except RuntimeError as err:
        raise ValueError(
            f"the physics does not accept a batch of {n} stacked copies of the {like.shape[0]} items "
            f"(per-item parameters?): pass physics_for_batch to posterior()") from err
    if shape != tuple(y_n.shape):
        raise ValueError(f"on {n} stacked copies the physics returns shape {shape}, expected "
                         f"{tuple(y_n.shape)}: pass physics_for_batch to posterior()")
