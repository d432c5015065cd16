"""ADMM for total variation along chosen axes of a volume: the model-based half of DiffusionMBIR.

For ``argmin_x ||A x - y||^2 / 2 + lam ||D x||_1`` with ``D`` the forward differences along the
chosen axes, ADMM splits ``z = D x`` and iterates (Boyd et al. 2011, Section 6.4.1; DiffusionMBIR,
Chung, Ryu & Ye 2023, Eqs. 9-11):

    x <- CG[(A^H A + rho D^T D) x = A^H y + rho D^T (z - u)]   (a few iterations from the current x)
    z <- shrink(D x + u, lam / rho)
    u <- u + D x - z

``z`` and ``u`` persist across calls (across the diffusion steps in DiffusionMBIR). The shrinkage
couples the channels of a pixel (a complex image's real and imaginary part) and, with several
axes, the directions (isotropic TV). Boundaries: ``"neumann"`` (the difference past the last slice
is 0, as :func:`~diffinverse.baselines.total_variation`) or ``"circular"`` (the last slice is tied to
the first, as in the official DiffusionMBIR code).

References:
    Boyd, Parikh, Chu, Peleato & Eckstein, "Distributed Optimization and Statistical Learning via the
    Alternating Direction Method of Multipliers", Found. Trends Mach. Learn. 2011.
    Chung, Ryu & Ye, "Solving 3D Inverse Problems using Pre-trained 2D Diffusion Models", CVPR 2023.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from diffinverse.samplers.data_consistency import cg_data_consistency

__all__ = ["AdmmTV"]


class AdmmTV:
    """One ADMM-TV iteration at a time, with its split variables ``z, u`` kept between calls.

    Args:
        lam: TV weight (``>= 0``; 0 gives least squares).
        rho: ADMM penalty (``> 0``).
        axes: the axes of ``x`` to difference along (e.g. ``(2,)``: the slice axis of
            ``(B, C, D, H, W)``; ``(2, 3, 4)``: all three).
        boundary: ``"neumann"`` or ``"circular"``.
        cg_iters: CG iterations of the ``x`` update.
    """

    def __init__(self, *, lam: float, rho: float, axes: Sequence[int] = (2,),
                 boundary: Literal["neumann", "circular"] = "neumann", cg_iters: int = 1):
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be finite and >= 0, got {lam}")
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be finite and > 0, got {rho}")
        if boundary not in ("neumann", "circular"):
            raise ValueError(f"boundary must be 'neumann' or 'circular', got {boundary!r}")
        if not axes or len(set(axes)) != len(axes) or any(a < 2 for a in axes):
            raise ValueError(f"axes must be distinct spatial axes (>= 2), got {tuple(axes)}")
        if cg_iters < 1:
            raise ValueError(f"cg_iters must be >= 1, got {cg_iters}")
        self.lam, self.rho, self.axes = float(lam), float(rho), tuple(axes)
        self.boundary, self.cg_iters = boundary, int(cg_iters)

    def diff(self, x: torch.Tensor) -> torch.Tensor:
        """``D x``: ``(len(axes), *x.shape)`` forward differences."""
        out = []
        for a in self.axes:
            if self.boundary == "circular":
                out.append(torch.roll(x, -1, a) - x)
            else:
                d = torch.zeros_like(x)
                n = x.shape[a]
                d.narrow(a, 0, n - 1).copy_(x.narrow(a, 1, n - 1) - x.narrow(a, 0, n - 1))
                out.append(d)
        return torch.stack(out)

    def diff_adjoint(self, p: torch.Tensor) -> torch.Tensor:
        """``D^T p`` for ``p: (len(axes), *x.shape)``."""
        out = torch.zeros_like(p[0])
        for k, a in enumerate(self.axes):
            if self.boundary == "circular":
                out += torch.roll(p[k], 1, a) - p[k]
            else:
                n = out.shape[a]
                pk = p[k].narrow(a, 0, n - 1)
                out.narrow(a, 0, n - 1).sub_(pk)
                out.narrow(a, 1, n - 1).add_(pk)
        return out

    def init_state(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split variables ``z = u = 0``, shaped like ``D x``."""
        z = torch.zeros((len(self.axes), *x.shape), dtype=x.dtype, device=x.device)
        return {"z": z, "u": torch.zeros_like(z)}

    def step(self, x: torch.Tensor, aty: torch.Tensor, physics, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """One iteration from ``x`` (updates ``state``'s ``z`` and ``u`` in place); returns the new ``x``."""
        z, u = state["z"], state["u"]
        rho = self.rho
        x = cg_data_consistency(x, aty, physics, num_iters=self.cg_iters, mu=0.0,
                                penalty=(lambda v: rho * self.diff_adjoint(self.diff(v)),
                                         rho * self.diff_adjoint(z - u)))
        dx = self.diff(x)
        v = dx + u
        # shrinkage of each pixel's vector over directions and channels (dims 0 and 2 of (k, B, C, ...))
        norm = v.square().sum(dim=(0, 2), keepdim=True).sqrt()
        z.copy_(v * (1 - (self.lam / rho) / norm.clamp_min(1e-12)).clamp_min(0))
        u.add_(dx - z)
        return x
