"""The prior's network as a sampler calls it: one object for counting, memory layout, precision, compile.

A sampler never calls its prior directly: it calls a :class:`NetworkCall`, which

* counts network evaluations (``nfe``; one evaluation = one call on the whole current batch);
* hands the network its input in the state's memory layout (channels-last for 4-D states when
  asked: convolutions then run in NHWC) and returns its output in that layout;
* runs it under bfloat16 autocast when asked (the output is cast back to the input's dtype);
* calls a ``torch.compile``-d version of the prior when asked;
* accepts ``sigma`` as a float, or as a 0-d tensor on the state's device, which it passes on
  without reading it back to the host (so that a step can be captured as a CUDA graph).

Where each option pays off, and by how much, is measured in ``benchmarks/README.md``.
"""
from __future__ import annotations

import torch

from diffinverse.priors.base import Prior, as_sigma

__all__ = ["NetworkCall", "in_layout"]


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


class NetworkCall:
    """``D(x, sigma)`` of a prior, counted, in the state's layout and precision.

    Args:
        prior: the denoiser ``D(x, sigma) = E[x0 | x0 + sigma n = x]`` (a
            :class:`~diffinverse.priors.base.Prior` or any deepinv ``Denoiser``).
        autocast: run the network under bf16 autocast (its output is cast back to the input's
            dtype; everything outside the network keeps that dtype). Worthwhile on hardware with
            bf16 units; off by default, so that results do not depend on the hardware.
        channels_last: keep 4-D states in channels-last layout (the same numbers up to float
            rounding; faster convolutions on most hardware). Turn it off for a denoiser that needs
            a standard-layout input (e.g. one calling ``.view`` on it).
        compile: ``torch.compile`` the prior (``True``, or a dict of ``torch.compile`` keyword
            arguments); the first call compiles.

    Attributes:
        nfe: network evaluations since construction or the last :meth:`reset`.
    """

    def __init__(self, prior, *, autocast: bool = False, channels_last: bool = True, compile: bool | dict = False):
        if not callable(prior):
            raise TypeError(f"prior must be a denoiser callable as prior(x, sigma), got {type(prior).__name__}")
        self.prior = prior
        self.autocast = bool(autocast)
        self.channels_last = bool(channels_last)
        # a Prior is called through denoise() on a (B,) sigma tensor: its value checks happen once,
        # on the sampler's grid, not at every call
        denoise = prior.denoise if isinstance(prior, Prior) else prior
        self._denoise = torch.compile(denoise, **(compile if isinstance(compile, dict) else {})) if compile else denoise
        self.nfe = 0

    def reset(self) -> None:
        """Start counting network evaluations from zero."""
        self.nfe = 0

    def layout(self, x: torch.Tensor) -> torch.memory_format:
        """The memory layout a state like ``x`` is kept in: channels-last for 4-D states when
        ``channels_last`` is on, else the standard one."""
        return torch.channels_last if self.channels_last and x.ndim == 4 else torch.contiguous_format

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The Tweedie mean ``D(x, sigma)``, counted as one evaluation.

        Args:
            x: ``(B, C, ...)`` noisy images.
            sigma: the noise level, a float or a 0-d tensor on ``x``'s device (any floating dtype;
                it is cast to ``x``'s).

        Returns:
            ``(B, C, ...)`` in ``x``'s dtype and in the layout of :meth:`layout`.
        """
        self.nfe += 1
        layout = self.layout(x)
        x = in_layout(x, layout)
        if not self.autocast:
            return in_layout(self._evaluate(x, sigma), layout)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return in_layout(self._evaluate(x, sigma).to(x.dtype), layout)

    def _evaluate(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor):
            # a device tensor is not read back to the host (a captured step cannot be)
            sigma = sigma.to(x.dtype).expand(x.shape[0])
        elif isinstance(self.prior, Prior):
            sigma = as_sigma(sigma, x)   # a float, checked on the host
        if isinstance(self.prior, Prior):
            self.prior.check_input(x)
        return self._denoise(x, sigma)
