"""Posterior samplers (one file each, one shared loop) and the table that names them."""
from .base import DiffusionSampler, Posterior
from .dds import DDS
from .mbir import DiffusionMBIR
from .dps import DPS
from .reddiff import REDDiff
from .table import SAMPLERS, SamplerSpec, sampler_spec

__all__ = ["DiffusionSampler", "Posterior", "DDS", "DiffusionMBIR", "DPS", "REDDiff", "SAMPLERS", "SamplerSpec", "sampler_spec"]
