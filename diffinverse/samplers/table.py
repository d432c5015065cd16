"""The table of samplers: one entry per method, read by the command line, the tasks and benchmarks.

Adding a sampler to the package means one class in its own module and one :class:`SamplerSpec`
here; the command line then offers it (``--sampler NAME``, its options as ``--NAME-OPTION``), and
:mod:`diffinverse.tasks` and the benchmarks find it by name.
"""
from __future__ import annotations

from dataclasses import dataclass

from diffinverse.samplers.dds import DDS
from diffinverse.samplers.dps import DPS
from diffinverse.samplers.reddiff import REDDiff
from diffinverse.samplers.stsl import STSL

__all__ = ["SAMPLERS", "SamplerSpec", "sampler_spec"]


@dataclass(frozen=True)
class SamplerSpec:
    """What the package knows of one sampler.

    Attributes:
        name: the short name used on the command line and in task settings (``"dps"``).
        cls: the sampler class, constructed as ``cls(prior, num_steps=..., **options)``.
        options: the class's own keyword options that the command line exposes (as
            ``--NAME-OPTION``) and task settings may set, with their types.
        summary: one line on what the method is.
        paper: the reference, as cited in the class's docstring.
    """

    name: str
    cls: type
    options: dict[str, type]
    summary: str
    paper: str


SAMPLERS: dict[str, SamplerSpec] = {
    "dps": SamplerSpec(
        name="dps", cls=DPS, options={"zeta": float, "squared_norm": bool},
        summary="posterior sampling, a gradient step through the network on ||y - A(x0_hat)|| per step",
        paper="Chung et al., Diffusion Posterior Sampling for General Noisy Inverse Problems, ICLR 2023"),
    "reddiff": SamplerSpec(
        name="reddiff", cls=REDDiff, options={"lam": float, "lr": float},
        summary="variational: Adam on the data term plus the denoiser's residual (no backpropagation)",
        paper="Mardani et al., A Variational Perspective on Solving Inverse Problems with Diffusion "
              "Models, ICLR 2024"),
    "dds": SamplerSpec(
        name="dds", cls=DDS, options={"gamma": float, "cg_iters": int, "eta": float},
        summary="data consistency by a few CG steps on the Tweedie estimate, then DDIM (no backpropagation)",
        paper="Chung, Lee & Ye, Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems, "
              "ICLR 2024"),
    "stsl": SamplerSpec(
        name="stsl", cls=STSL,
        options={"zeta": float, "inner_steps": int, "eta": float, "second_order": bool, "num_probes": int,
                 "probe": str, "kappa": float, "squared_norm": bool, "final_dc_iters": int},
        summary="latent posterior sampling: K gradient steps per level on the data term plus a Hutchinson "
                "Hessian-trace term (second-order Tweedie); second_order=False is latent DPS",
        paper="Rout et al., Beyond First-Order Tweedie: Solving Inverse Problems using Latent Diffusion, CVPR 2024"),
}


def sampler_spec(name: str) -> SamplerSpec:
    """The table's entry for ``name``; ``ValueError`` naming the known samplers otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}") from None
