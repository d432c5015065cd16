"""The network's forward pass replayed as a CUDA graph: one launch per call instead of hundreds.

On a GPU, small images leave the network bound by kernel launches: the shipped 1.5M-parameter
UNet launches 426 kernels per call, whose host-side cost at 64x64, batch 4, is about three times the
GPU's own work. :class:`GraphedNetwork` captures the call once per input shape (after warm-up
calls on a side stream, as CUDA graphs require) and then replays it: per call, one copy of the
input into the graph's input buffer, one fill of its noise-level buffer, one graph launch and one
copy of the output.

Only forward passes without autograd can be replayed this way (RED-Diff's network calls, under
``torch.inference_mode``); DPS differentiates through the network and cannot use it. The network
must be capturable: no host synchronisation, no data-dependent shapes, no new device memory
outside PyTorch's allocator (the UNet priors of this package are).

A graph reads the network's weights from the device memory they had at capture. In-place changes
(an optimiser step, ``load_state_dict``) are therefore seen by later replays; for an
``nn.Module`` network, every call also checks that its parameters and buffers still live where
they did (``.to()``, ``.half()`` or a reassigned parameter move them) and captures anew if not.

References:
    NVIDIA, "CUDA C++ Programming Guide", section "CUDA Graphs"; ``torch.cuda.graph``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from diffinverse.priors.base import Prior, as_sigma, checked_sigma

__all__ = ["GraphedNetwork"]


@dataclass
class _Capture:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    sigma: torch.Tensor
    out: torch.Tensor


class GraphedNetwork:
    """Wrap a denoiser ``network(x, sigma)`` so that its calls replay a captured CUDA graph.

    Args:
        network: the denoiser. For a :class:`~diffinverse.priors.base.Prior` the graph holds its
            ``denoise`` (sigma already validated); any other callable is captured as ``network(x,
            sigma)`` with ``sigma`` a ``(B,)`` tensor.
        warmup: calls run on a side stream before a capture (cuDNN picks its algorithms there).
        channels_last: give the network 4-D inputs in channels-last layout (the graph's input
            buffer has it, so the copy into the buffer converts); other inputs keep their shape's
            standard layout.

    A call takes ``x: (B, ...)`` on a CUDA device and ``sigma`` (a float, or a ``(B,)`` tensor) and
    returns a new tensor in the standard (contiguous) layout, never the graph's output buffer. One
    graph is captured, and kept, for each shape, dtype, device and autocast state of ``x``; the
    first call with a new one costs ``warmup + 1`` ordinary calls.

    Raises (on call):
        ValueError: if ``x`` has the wrong channel count for a ``Prior``, is not on a CUDA device,
            or ``sigma`` is negative or non-finite.
        RuntimeError: if a gradient is required (a replayed graph has no autograd history).
    """

    def __init__(self, network, *, warmup: int = 2, channels_last: bool = True):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        self.network = network
        self.warmup = int(warmup)
        self.channels_last = channels_last
        self._captures: dict[tuple, _Capture] = {}
        self._captured_weights: tuple | None = None

    def _weights(self) -> tuple | None:
        """Where the network's parameters and buffers live, and as what (``None``: not a module)."""
        if not isinstance(self.network, torch.nn.Module):
            return None
        return tuple((t.data_ptr(), t.dtype, t.device) for t in (*self.network.parameters(), *self.network.buffers()))

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        if isinstance(self.network, Prior):
            # the graph holds denoise(), which skips the public call's checks
            self.network.check_input(x)
        if x.device.type != "cuda":
            raise ValueError(f"cuda_graph needs the network's input on a CUDA device, got {x.device}")
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("cuda_graph replays forward passes without autograd; this call needs a gradient "
                               "through the network (DPS): use cuda_graph=False")
        weights = self._weights()
        if weights != self._captured_weights:
            # the weights moved since the graphs were captured: their addresses are stale
            self._captures.clear()
            self._captured_weights = weights
        key = (tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled("cuda"))
        cap = self._captures.get(key)
        if cap is None:
            cap = self._captures[key] = self._capture(x)
        cap.x.copy_(x)
        if isinstance(sigma, torch.Tensor):
            cap.sigma.copy_(as_sigma(sigma, x))
        else:
            cap.sigma.fill_(checked_sigma(sigma))
        cap.graph.replay()
        return cap.out.clone(memory_format=torch.contiguous_format)

    def _forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if isinstance(self.network, Prior):
            return self.network.denoise(x, sigma)
        return self.network(x, sigma)

    def _capture(self, like: torch.Tensor) -> _Capture:
        # static buffers are ordinary tensors (not inference tensors), so that calls made both inside
        # and outside torch.inference_mode can copy into them
        layout = torch.channels_last if self.channels_last and like.ndim == 4 else torch.contiguous_format
        with torch.inference_mode(False):
            x = like.clone(memory_format=layout)
            sigma = torch.ones(like.shape[0], dtype=like.dtype, device=like.device)
        # under autocast, the weights' low-precision copies must be made inside the graph: autocast's
        # cache would keep them in memory that is freed when the caller's autocast region ends
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False,
                                  enabled=torch.is_autocast_enabled("cuda"))
        side = torch.cuda.Stream(like.device)
        side.wait_stream(torch.cuda.current_stream(like.device))
        with torch.no_grad(), autocast, torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._forward(x, sigma)
        torch.cuda.current_stream(like.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), autocast, torch.cuda.graph(graph):
            out = self._forward(x, sigma)
        return _Capture(graph=graph, x=x, sigma=sigma, out=out)
