"""Test-time adaptation of the prior: LoRA adapters trained on the measurement during one run.

With ``adapt=Adaptation(...)`` a sampler fits low-rank adapters of its prior's network to the
measurement while it samples, as in Steerable Conditional Diffusion (Barbano et al. 2025). At every
adapted step ``i`` (noise level ``sigma_i``) and before the step's own update, a few Adam steps
on the adapters ``theta`` minimise

    L(theta) = mean |A(CG_K(x0_hat(theta))) - y|^2,    x0_hat(theta) = D_theta(x_in, sigma_i),

where ``x_in`` is what the step feeds the network (the noisy state for DPS and DDS, ``mu +
sigma eps`` for RED-Diff) and ``CG_K`` is the DDS data-consistency step, ``K`` conjugate-gradient
iterations on ``(I + gamma A^H A) x = x0_hat + gamma A^H y`` from ``x0_hat``
(:func:`~diffinverse.samplers.data_consistency.cg_data_consistency`; differentiated through by
autograd). The step then runs unchanged with the adapted network ``D_theta``. The adapters and
Adam's moments are kept from one adapted step to the next and dropped at the end of the run.

Which variant, and why: Barbano et al.'s (code: alexdenker/SteerableConditionalDiffusion, ``scd.py``):
one Adam optimiser for the whole run (its moments carry over between diffusion steps), the loss on
the CG output with the sampler's own CG length, a down factor with the layer's kernel drawn from
``N(0, 1/r^2)`` and a zero up factor, adaptation every ``k``-th step. Chung & Ye's DDIP (code:
HJ-harry/DDIP3D) builds a new AdamW optimiser at every diffusion step (no moments carried over),
runs one CG iteration inside the loss and adapts within a window of timesteps; the window is
offered here too (``sigma_range``). Barbano et al.'s variant is the one whose optimiser state
persists, which is what lets a handful of Adam steps per diffusion step add up over a run, and
its loss is on the same estimate (``CG_K`` of ``x0_hat``) that DDS's step uses. Two differences
from their code: the step that follows uses the adapted network for both its estimate and (in
DDS) its noise estimate ``eps_hat`` (their code takes ``eps_hat`` from the unadapted network), so
that any sampler with a network prior works unchanged; and no TV term is added to the loss.

How the adapters are applied, without touching the shipped weights: each adapted layer's weight
``W`` (shape ``(out, ...)``, viewed as the matrix ``(out, fan_in)``) is replaced, for one network
call, by ``W + up @ down`` with ``up: (out, r)`` and ``down: (r, fan_in)``, the rank-``r`` update of
LoRA (Hu et al. 2022) in merged form (for a convolution the same function as Barbano et al.'s
down convolution with the layer's kernel followed by a 1x1 up convolution, at the cost of one
convolution instead of three). The replacement is :func:`torch.func.functional_call`: the
prior's parameters are neither modified, copied as a whole, nor given gradients (``W`` enters
detached; the adapters are new tensors that live in the run's :class:`AdaptedNetwork`).

Cost, per adapted step: ``steps`` network forward and backward passes plus ``steps * (K + 1)``
extra ``A^H A`` / ``A`` applications; counted in :class:`AdaptationRecord` (the sampler's
``last_adaptation``), apart from the sampler's own evaluations (``last_nfe``). With
``lr = 0`` the adapters stay zero and the run is bit for bit the unadapted one (the adaptation
draws no randomness from the sampler's generator; the down factors come from their own seed).
The adapters are shared by the batch (one set for all images of a call, e.g. all samples of a
``posterior`` chunk). A sampler that calls the network on parts of its state (DiffusionMBIR, on the
slices of a volume) cannot adapt: its network input is not shaped like ``A^H y`` (``ValueError``).

References:
    Barbano, Denker, Chung, Roh, Arridge, Maass, Jin & Ye, "Steerable Conditional Diffusion for
    Out-of-Distribution Adaptation in Medical Image Reconstruction", IEEE TMI 2025 (Algorithm 1).
    Chung & Ye, "Deep Diffusion Image Prior for Efficient OOD Adaptation in 3D Inverse Problems",
    ECCV 2024.
    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from deepinv.physics import LinearPhysics
from torch import nn

from diffinverse.priors.stack import ImageStackPrior
from diffinverse.samplers.data_consistency import cg_data_consistency
from diffinverse.samplers.network import NetworkCall

__all__ = ["Adaptation", "AdaptationRecord", "AdaptedNetwork", "adapted", "lora_targets"]

_LAYERS = {"conv": (nn.modules.conv._ConvNd,), "linear": (nn.Linear,),
           "conv+linear": (nn.modules.conv._ConvNd, nn.Linear)}


@dataclass(frozen=True)
class Adaptation:
    """How a sampler adapts its prior to the measurement during a run (see the module notes).

    Args:
        rank: LoRA rank ``r`` (per layer at most ``min(out, fan_in)`` of its weight matrix).
        steps: Adam steps per adapted diffusion step (one network forward and backward each).
        lr: Adam's learning rate on the adapters (``0``: the unadapted run, bit for bit).
        every: adapt at every ``every``-th step of the run (steps ``0, every, 2 every, ...``).
        sigma_range: ``(low, high)``: adapt only at steps whose noise level is in it (data
            units, both ends included); ``None``: at every level.
        layers: which layers get adapters: ``"conv"`` (every ``nn.Conv*``), ``"linear"`` or
            ``"conv+linear"``.
        include: a regular expression; only layers whose qualified name (in
            ``prior.named_modules()``) it matches are adapted (``re.search``). ``None``: all.
        gamma: data weight of the CG in the loss (multiplies ``A^H A``); ``None`` takes the one
            of the sampler's own CG in the run (DDS), else 1.
        cg_iters: CG iterations in the loss; ``None`` takes the sampler's ``cg_iters`` (DDS),
            else 5.
        init_seed: seed of the down factors' draw (a generator of their own: the run's noise,
            from the sampler's generator, is the same with or without adaptation).

    Raises:
        ValueError / TypeError: on an option out of its range or of the wrong type.
    """

    rank: int = 4
    steps: int = 1
    lr: float = 1e-4
    every: int = 1
    sigma_range: tuple[float, float] | None = None
    layers: str = "conv"
    include: str | None = None
    gamma: float | None = None
    cg_iters: int | None = None
    init_seed: int = 0

    def __post_init__(self):
        for name in ("rank", "steps", "every", "init_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Adaptation.{name} must be an int, got {type(value).__name__}")
        if self.rank < 1 or self.steps < 1 or self.every < 1:
            raise ValueError(f"Adaptation needs rank, steps and every >= 1, got rank={self.rank}, "
                             f"steps={self.steps}, every={self.every}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"Adaptation.lr must be a finite number >= 0, got {self.lr!r}")
        if self.sigma_range is not None:
            lo, hi = (float(v) for v in self.sigma_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(f"Adaptation.sigma_range must be (low, high) with 0 <= low <= high, "
                                 f"got {self.sigma_range!r}")
            object.__setattr__(self, "sigma_range", (lo, hi))
        if self.layers not in _LAYERS:
            raise ValueError(f"Adaptation.layers must be one of {sorted(_LAYERS)}, got {self.layers!r}")
        if self.include is not None:
            try:
                re.compile(self.include)
            except re.error as err:
                raise ValueError(f"Adaptation.include is not a regular expression: {err}") from None
        if self.gamma is not None and not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"Adaptation.gamma must be finite and > 0 (or None), got {self.gamma!r}")
        if self.cg_iters is not None and (isinstance(self.cg_iters, bool) or not isinstance(self.cg_iters, int)
                                          or self.cg_iters < 1):
            raise ValueError(f"Adaptation.cg_iters must be an int >= 1 (or None), got {self.cg_iters!r}")

    def adapts(self, i: int, sigma: float) -> bool:
        """Whether step ``i`` of a run, starting at noise level ``sigma``, is adapted."""
        if i % self.every:
            return False
        return self.sigma_range is None or self.sigma_range[0] <= sigma <= self.sigma_range[1]


@dataclass
class AdaptationRecord:
    """What adaptation did in one run (a sampler's ``last_adaptation``).

    Attributes:
        adapted_steps: indices of the adapted steps of the run.
        forward_passes, backward_passes: network passes spent on adaptation (besides the
            sampler's own ``last_nfe`` evaluations).
        losses: per adapted step, the loss before each of its Adam steps.
        parameters: number of adapter parameters (the prior's own are untouched).
        layers: number of adapted layers.
    """

    adapted_steps: list[int] = field(default_factory=list)
    forward_passes: int = 0
    backward_passes: int = 0
    losses: list[list[float]] = field(default_factory=list)
    parameters: int = 0
    layers: int = 0


def lora_targets(prior, adaptation: Adaptation) -> list[tuple[str, torch.Tensor]]:
    """``[(parameter name, weight)]`` of the layers of ``prior`` that ``adaptation`` adapts.

    ``include`` is matched against the names inside the 2-D prior also when ``prior`` wraps it in
    an :class:`~diffinverse.priors.stack.ImageStackPrior` (the returned names keep the wrapper's
    ``prior.`` prefix).

    Raises:
        TypeError: if ``prior`` is not a ``torch.nn.Module`` (no network to adapt).
        ValueError: if it has no floating-point layer of the requested kind (``layers`` /
            ``include``), e.g. an analytic prior such as a Gaussian mixture.
    """
    if not isinstance(prior, nn.Module):
        raise TypeError(f"adaptation needs a network prior (a torch.nn.Module with convolutions), got "
                        f"{type(prior).__name__}")
    kinds = _LAYERS[adaptation.layers]
    pattern = re.compile(adaptation.include) if adaptation.include is not None else None
    inner, prefix = (prior.prior, "prior.") if isinstance(prior, ImageStackPrior) else (prior, "")
    targets = []
    for name, module in inner.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, kinds) or not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            continue
        if pattern is not None and not pattern.search(name):
            continue
        targets.append((f"{prefix}{name}.weight" if name else f"{prefix}weight", weight))
    if not targets:
        which = f"matching include={adaptation.include!r}" if pattern is not None else "at all"
        raise ValueError(f"{type(prior).__name__} has no trainable {adaptation.layers} layers {which} "
                         f"(torch.nn.Conv*/Linear with a floating-point weight): adaptation needs a network "
                         f"prior such as the UNet")
    return targets


class _Evaluate(nn.Module):
    """Holds the prior as a child, so that :func:`torch.func.functional_call` can replace its
    weights for one call of the base :class:`NetworkCall` evaluation."""

    def __init__(self, prior: nn.Module, evaluate):
        super().__init__()
        self.prior = prior
        self._fn = evaluate

    def forward(self, x, sigma):
        return self._fn(x, sigma)


class AdaptedNetwork(NetworkCall):
    """A :class:`~diffinverse.samplers.network.NetworkCall` of the prior with LoRA adapters
    that it trains on ``y`` at the first network call of every step armed by :meth:`arm`.

    Args:
        network: the sampler's network call (its prior, autocast and layout are kept; not compiled).
        adaptation: the options.
        y, physics: the run's measurements and their linear forward model.
        gamma, cg_iters: the CG of the loss (resolved from the sampler where ``adaptation`` leaves
            them ``None``).

    Attributes:
        record: the :class:`AdaptationRecord` of the run.
    """

    def __init__(self, network: NetworkCall, adaptation: Adaptation, y: torch.Tensor, physics, *,
                 gamma: float, cg_iters: int):
        if not isinstance(physics, LinearPhysics):
            raise TypeError(f"adaptation's loss runs CG on A^H A: it needs a linear physics, got "
                            f"{type(physics).__name__}")
        super().__init__(network.prior, autocast=network.autocast, channels_last=network.channels_last)
        self.adaptation = adaptation
        self.y, self.physics = y, physics
        self.gamma, self.cg_iters = float(gamma), int(cg_iters)
        self._aty = physics.A_adjoint(y).detach()
        self._holder = _Evaluate(network.prior, super()._evaluate)
        g = torch.Generator().manual_seed(adaptation.init_seed)
        self._adapters: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for name, weight in lora_targets(network.prior, adaptation):
            out, fan_in = weight.shape[0], weight[0].numel()
            r = min(adaptation.rank, out, fan_in)
            down = (torch.randn(r, fan_in, generator=g, dtype=torch.float32) / adaptation.rank).to(
                device=weight.device, dtype=weight.dtype).requires_grad_(True)
            up = torch.zeros(out, r, device=weight.device, dtype=weight.dtype, requires_grad=True)
            self._adapters.append((f"prior.{name}", weight, up, down))
        params = [t for _, _, up, down in self._adapters for t in (up, down)]
        self._optimizer = torch.optim.Adam(params, lr=adaptation.lr)
        self._params = params
        self.record = AdaptationRecord(parameters=sum(p.numel() for p in params), layers=len(self._adapters))
        self._armed: tuple[int, float] | None = None

    def arm(self, i: int, sigma: float) -> None:
        """Before step ``i`` (at noise level ``sigma``): adapt at the step's first network call if
        the options select this step."""
        self._armed = (i, sigma) if self.adaptation.adapts(i, sigma) else None

    def _weights(self, trained: bool) -> dict[str, torch.Tensor]:
        """The adapted layers' weights ``W + up @ down`` (``W`` detached; the adapters detached
        too unless ``trained``), each in ``W``'s memory layout."""
        out = {}
        for name, weight, up, down in self._adapters:
            if not trained:
                up, down = up.detach(), down.detach()
            out[name] = weight.detach().clone().add_((up @ down).view(weight.shape))
        return out

    def _call(self, x: torch.Tensor, sigma, trained: bool) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):   # the merge in the weights' precision
            weights = self._weights(trained)
        return torch.func.functional_call(self._holder, weights, (x, sigma))

    def _evaluate(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if self._armed is not None:
            step, self._armed = self._armed, None
            self._adapt(x, sigma, step)
        return self._call(x, sigma, trained=False)

    def _adapt(self, x: torch.Tensor, sigma, step: tuple[int, float]) -> None:
        """``steps`` Adam steps on the loss of the module notes at the network input ``x``."""
        i, level = step
        if x.shape != self._aty.shape:
            raise ValueError(f"adaptation needs the network's input shaped like A^H y, {tuple(self._aty.shape)}, got "
                             f"{tuple(x.shape)} (a sampler that calls the network on parts of its state, such as "
                             f"slices of a volume, cannot adapt)")
        losses = []
        # the step may call the network under no_grad or inference_mode (DDS, RED-Diff): the
        # adaptation differentiates, on a copy of the input that is part of no graph
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone()
            sigma = sigma.detach().clone() if isinstance(sigma, torch.Tensor) else sigma
            for _ in range(self.adaptation.steps):
                x0_hat = self._call(x, sigma, trained=True)
                with torch.autocast(x.device.type, enabled=False):
                    x0_dc = cg_data_consistency(x0_hat.to(x.dtype), self._aty, self.physics, gamma=self.gamma,
                                                num_iters=self.cg_iters)
                    loss = (self.physics.A(x0_dc) - self.y).abs().pow(2).mean()
                self.record.forward_passes += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"adaptation loss is {value} at step {i} (sigma {level:.4g}), Adam step {len(losses) + 1}: "
                        f"lower Adaptation.lr (now {self.adaptation.lr:g}) or check y and the physics")
                losses.append(value)
                grads = torch.autograd.grad(loss, self._params)
                self.record.backward_passes += 1
                if not all(torch.isfinite(g).all() for g in grads):
                    raise FloatingPointError(f"adaptation gradient is not finite at step {i} (sigma {level:.4g}): "
                                             f"lower Adaptation.lr (now {self.adaptation.lr:g})")
                for p, g in zip(self._params, grads):
                    p.grad = g
                self._optimizer.step()
        self.record.adapted_steps.append(i)
        self.record.losses.append(losses)


@contextmanager
def adapted(sampler, y: torch.Tensor, physics, state=None) -> Iterator[AdaptedNetwork]:
    """For one run of ``sampler`` (whose ``adapt`` is set): its network swapped for an
    :class:`AdaptedNetwork`, restored on exit; the run's :class:`AdaptationRecord` is left in
    ``sampler.last_adaptation`` (also when the run fails).

    The loss's CG weight, where ``adapt.gamma`` is ``None``, is the one the sampler's own CG uses
    in this run (``state["gamma"]`` where its :meth:`init_state` keeps one, else its ``gamma``
    attribute), else 1.
    """
    options = sampler.adapt
    if options.gamma is not None:
        gamma = options.gamma
    elif isinstance(state, dict) and state.get("gamma") is not None:
        gamma = float(state["gamma"])
    else:
        gamma = float(getattr(sampler, "gamma", 1.0))
    cg_iters = options.cg_iters if options.cg_iters is not None else int(getattr(sampler, "cg_iters", 5))
    network = sampler.network
    adapted_network = AdaptedNetwork(network, options, y, physics, gamma=gamma, cg_iters=cg_iters)
    sampler.network = adapted_network
    try:
        yield adapted_network
    finally:
        sampler.network = network
        sampler.last_adaptation = adapted_network.record
