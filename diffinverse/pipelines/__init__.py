"""Tensor-level pipelines: measurements in, images out, no files and no argument parsing.

* :mod:`~diffinverse.pipelines.fastmri`: :func:`reconstruct_kspace`, fastMRI-layout k-space (and
  a mask) -> magnitude image (and posterior std), the pipeline of ``diffinverse-reconstruct``.
"""
from .fastmri import (
    BASELINES,
    METHODS,
    SAMPLER_DEFAULTS,
    KspaceReconstruction,
    SamplerDefaults,
    build_sampler,
    reconstruct_kspace,
    resolve_start,
    retrospective_mask,
)

__all__ = ["KspaceReconstruction", "SamplerDefaults", "SAMPLER_DEFAULTS", "BASELINES", "METHODS",
           "reconstruct_kspace", "build_sampler", "resolve_start", "retrospective_mask"]
