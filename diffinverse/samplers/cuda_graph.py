"""A sampler's step replayed as a CUDA graph: one launch per step instead of hundreds.

On a GPU, small images leave a sampler bound by kernel launches: the network launches hundreds of
kernels per call and the step a few dozen of its own (noise, the operator, the update), whose
host-side cost can exceed the GPU's work (counts and timings: ``benchmarks/README.md``, GPU
section). :class:`StepGraphs` captures a
sampler's whole step once (after warm-up runs on a side stream, as CUDA graphs require) over fixed
buffers, and replays it: per step one noise draw into its buffer and one graph launch.

What makes a step capturable: the step reads its noise levels ``sigma``, ``sigma_next`` from the
run's grid on the device, through a step counter on the device that the graph itself advances,
and its noise from a buffer that the loop refills from the caller's generator before each replay,
with the same draws as the eager loop; the step's operations are the eager loop's, so the results
are the same. A sampler opts in (``supports_cuda_graph = True``) when its step has no host
synchronisation and weighs its noise by zero where :meth:`draws_noise` says the step draws none
(a captured step always gets the noise buffer).

Buffers and reuse: the state, the measurements, the per-run state and the grid (unless it is the
grid last copied in, unchanged) are copied into the graph's buffers at the start of
every call; whatever else a step needs is allocated inside the capture, in the graph's own
memory (a buffer made outside it and not kept would be freed, and replays would write into
memory the allocator hands to others). The network's weights and the physics'
tensors are read at the addresses they had at capture: changes in place are seen by later
replays. A graph is reused by later calls with the same shapes and dtypes, the same sampler
settings, the same physics object (whose parameters, buffers and tensor attributes are still
where they were) and the same network (parameters and buffers likewise); otherwise (a new
physics, a reassigned mask, weights moved by ``.to()``) a new graph is captured.
Tensors that a physics holds only inside closures cannot be followed: build such a physics anew
instead of changing it. To find the network's tensors without walking its module tree at every
call, the first graphed call installs torch.nn's global registration hooks with a counter (they
count new submodules, parameters and buffers on any module, and change nothing).

References:
    NVIDIA, "CUDA C++ Programming Guide", section "CUDA Graphs"; ``torch.cuda.graph``.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.modules.module import (register_module_buffer_registration_hook,
                                     register_module_module_registration_hook,
                                     register_module_parameter_registration_hook)

__all__ = ["StepGraphs", "capture_graph", "capture_key", "sampler_settings"]


@dataclass
class _Capture:
    replay: Callable[[], None]
    x: torch.Tensor
    y: torch.Tensor
    state: dict[str, torch.Tensor | None] | None
    sigmas: torch.Tensor
    index: torch.Tensor
    noise: torch.Tensor | None
    x0_hat: torch.Tensor
    nfe_per_step: int
    keep: tuple  # the objects whose tensors the graph reads (keeps their ids from being reused)
    sigmas_from: tuple[torch.Tensor, int] | None = None  # the grid last copied in, and its version


def _tensor_dicts(modules: Iterable[torch.nn.Module]) -> list[dict]:
    """The non-empty parameter and buffer dicts of ``modules``."""
    return [d for m in modules for d in (m._parameters, m._buffers) if d]


def _addresses(dicts: Iterable[dict]) -> tuple[int, ...]:
    """Addresses of the tensors in ``dicts`` (entries may be ``None``)."""
    return tuple(t.data_ptr() for d in dicts for t in d.values() if t is not None)


def _physics_addresses(obj: Any) -> tuple[int, ...]:
    """Addresses of the tensors a physics holds: for a module, its parameters and buffers, and the
    tensor attributes of it and every submodule, also inside lists, tuples and dicts (a new tensor
    has a new address, also after ``.to()`` or ``.half()``)."""
    modules = list(obj.modules()) if isinstance(obj, torch.nn.Module) else []
    ptrs = list(_addresses(_tensor_dicts(modules)))
    values = [v for owner in (modules or [obj]) for v in getattr(owner, "__dict__", {}).values()]
    while values:
        v = values.pop()
        if isinstance(v, torch.Tensor):
            ptrs.append(v.data_ptr())
        elif isinstance(v, (list, tuple)):
            values.extend(v)
        elif isinstance(v, dict):
            values.extend(v.values())
    return tuple(ptrs)


_registrations = 0          # registrations of submodules, parameters and buffers seen in torch.nn
_counting = False
_network_dicts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _count_registration(module, name, value) -> None:
    global _registrations
    _registrations += 1


def _network_addresses(network: Any) -> tuple[int, ...]:
    """Addresses of the network's parameters and buffers, without walking its module tree at
    every call (a network is a deep tree; a physics, walked by :func:`_physics_addresses`, a flat one).

    The network's parameter and buffer dicts are collected once and again only after a
    registration of a submodule, parameter or buffer on any module (counted by torch.nn's global
    registration hooks, installed at the first call); the addresses are read from them at every
    call, which also sees tensors moved by ``.to()`` or swapped inside the dicts.
    """
    global _counting
    if not isinstance(network, torch.nn.Module):
        return ()
    if not _counting:
        for register in (register_module_module_registration_hook, register_module_parameter_registration_hook,
                         register_module_buffer_registration_hook):
            register(_count_registration)
        _counting = True
    found = _network_dicts.get(network)
    if found is None or found[0] != _registrations:
        found = (_registrations, _tensor_dicts(network.modules()))
        _network_dicts[network] = found
    return _addresses(found[1])


def _layout(t: torch.Tensor | None) -> tuple | None:
    # not the strides: a call's tensors are copied into the buffers whatever their memory layout
    return None if t is None else (tuple(t.shape), t.dtype, t.device)


def sampler_settings(sampler) -> tuple:
    """The plain settings (e.g. ``clip_x0``) of the sampler and of its network call (e.g.
    ``autocast``): what a captured step depends on besides its tensors."""
    def plain(obj) -> tuple:
        return tuple(sorted((k, v) for k, v in vars(obj).items() if not k.startswith("_")
                            and k not in ("last_nfe", "nfe")
                            and isinstance(v, (bool, int, float, str, tuple, type(None)))))
    return plain(sampler) + plain(sampler.network)


def capture_key(sampler, x: torch.Tensor, y: torch.Tensor, physics, state, sigmas: torch.Tensor,
                draws: Sequence[bool]) -> tuple:
    """What a captured step depends on: a call whose key equals a capture's replays that capture.

    The shapes, dtypes and devices of the call's tensors (not their memory layout: they are copied
    into the graph's buffers), whether any step draws noise, inference mode, the physics and the
    network (identity and where their tensors are), and the sampler's plain settings.
    """
    return (_layout(x), _layout(y), _layout(sigmas), any(draws), torch.is_inference_mode_enabled(),
            tuple((name, _layout(v)) for name, v in (state or {}).items()),
            id(physics), _physics_addresses(physics),
            id(sampler.prior), _network_addresses(sampler.prior), sampler_settings(sampler))


def _check_state(state) -> None:
    if state is not None and not (isinstance(state, dict) and
                                  all(v is None or isinstance(v, torch.Tensor) for v in state.values())):
        raise TypeError("cuda_graph needs a per-run state that is None or a dict of tensors")


class StepGraphs:
    """Captured steps of one sampler, keyed by what a capture depends on, most recent kept.

    Args:
        warmup: steps run on a side stream before a capture (cuDNN and autograd set themselves up
            there; their results are discarded).
        max_graphs: graphs kept (each holds its own memory pool); the least recently used goes.
    """

    def __init__(self, *, warmup: int = 3, max_graphs: int = 4):
        if warmup < 1 or max_graphs < 1:
            raise ValueError(f"need warmup >= 1 and max_graphs >= 1, got {warmup} and {max_graphs}")
        self.warmup = int(warmup)
        self.max_graphs = int(max_graphs)
        self._captures: OrderedDict[tuple, _Capture] = OrderedDict()

    def __len__(self) -> int:
        return len(self._captures)

    def run(self, sampler, x: torch.Tensor, y: torch.Tensor, physics, state, sigmas: torch.Tensor,
            levels: Sequence[float], draws: Sequence[bool], generator: torch.Generator,
            steps: Iterable[int]) -> tuple[torch.Tensor, Any, int]:
        """Run the steps of one call by replays: returns ``(x, state, nfe)`` after the last step.

        ``x``, ``state`` and ``sigmas`` (the grid on the device; ``levels`` the same on the host)
        are the call's initial state, per-run state and noise levels; ``draws[i]`` says whether
        step ``i`` draws noise. The returned ``x`` and ``state`` are the graph's buffers,
        overwritten by the next call: copy what you keep.

        Raises:
            ValueError: if the state is not on a CUDA device.
            RuntimeError: if the step cannot be captured (a host synchronisation or GPU work outside
                PyTorch in the physics or the network).
        """
        _check_state(state)
        key = capture_key(sampler, x, y, physics, state, sigmas, draws)
        cap = self._captures.get(key)
        if cap is None:
            cap = self._capture(sampler, x, y, physics, state, sigmas, any(draws))
            self._captures[key] = cap
            if len(self._captures) > self.max_graphs:
                self._captures.popitem(last=False)
        self._captures.move_to_end(key)
        cap.x.copy_(x)
        cap.y.copy_(y)
        if cap.sigmas_from is None or cap.sigmas_from[0] is not sigmas or cap.sigmas_from[1] != sigmas._version:
            cap.sigmas.copy_(sigmas)   # (a sampler hands the same grid to calls with the same levels)
            cap.sigmas_from = (sigmas, sigmas._version)
        cap.index.zero_()
        for name, value in (state or {}).items():
            if value is not None:
                cap.state[name].copy_(value)
        for i in steps:
            if draws[i]:
                _refill(cap.noise, generator)
            cap.replay()
            if sampler.callback is not None:
                sampler.callback(i, levels[i], cap.x, cap.x0_hat)
        return cap.x, cap.state, cap.nfe_per_step * (len(sigmas) - 1)

    def _capture(self, sampler, x, y, physics, state, sigmas, draws) -> _Capture:
        # fixed buffers are ordinary tensors (not inference tensors), so that calls made inside and
        # outside torch.inference_mode can copy into them
        with torch.inference_mode(False):
            bx, by, bsigmas = x.clone(), y.clone(), sigmas.clone()
            bstate = None if state is None else {k: None if v is None else v.clone() for k, v in state.items()}
            index = torch.zeros(1, dtype=torch.long, device=x.device)
            noise = torch.zeros_like(x, memory_format=torch.contiguous_format) if draws else None  # refilled per step

        nfe_per_step = 0

        pairs = bsigmas.unfold(0, 2, 1)   # row i: (sigma_i, sigma_i+1), a view of the grid buffer

        def step() -> torch.Tensor:
            nonlocal nfe_per_step
            # the row is allocated in the graph's own memory: a buffer made outside the capture
            # and not kept by it would be freed after the capture and written to by every replay
            sigma, sigma_next = torch.index_select(pairs, 0, index)[0].unbind()
            index.add_(1)
            before = sampler.network.nfe
            x_next, x0_hat = sampler.step(bx, sigma, sigma_next, noise, by, physics, bstate)
            nfe_per_step = sampler.network.nfe - before
            if x_next is not bx:
                bx.copy_(x_next)
            return x0_hat

        try:
            replay, x0_hat = capture_graph(step, x.device, warmup=self.warmup, reset=index.zero_)
        except RuntimeError as err:
            raise RuntimeError(
                f"cuda_graph could not capture a step of {type(sampler).__name__} with {type(physics).__name__}: "
                f"the physics and the network must run torch operations only, without host synchronisation "
                f"(use cuda_graph=False for this physics). Cause: {err}") from err
        return _Capture(replay=replay, x=bx, y=by, state=bstate, sigmas=bsigmas, index=index, noise=noise,
                        x0_hat=x0_hat, nfe_per_step=nfe_per_step, keep=(physics, sampler.prior))


def capture_graph(step: Callable[[], Any], device: torch.device, *, warmup: int = 3,
                  reset: Callable[[], Any] | None = None) -> tuple[Callable[[], None], Any]:
    """Capture ``step`` (no arguments, fixed input tensors) as a CUDA graph, after ``warmup`` runs
    on a side stream (``reset`` before each); returns the graph's replay and what ``step`` returned
    at capture (tensors that replays rewrite).

    Raises:
        ValueError: if ``device`` is not a CUDA device.
        RuntimeError: if ``step`` cannot be captured (e.g. it synchronises with the host).
    """
    if device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA device, got {device}")
    caller = torch.cuda.current_stream(device)
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(caller)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                if reset is not None:
                    reset()
                step()
        caller.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
    except RuntimeError:
        # a failed capture can leave its capture stream current
        torch.cuda.set_stream(caller)
        raise
    return graph.replay, out


def _refill(noise: torch.Tensor, generator: torch.Generator) -> None:
    """Draw standard normal noise into ``noise``, the same numbers as the eager loop's ``randn``."""
    if generator.device.type == noise.device.type and generator.device.index in (None, noise.device.index):
        noise.normal_(generator=generator)
    else:
        noise.copy_(torch.randn(noise.shape, generator=generator, dtype=noise.dtype, device=generator.device))
