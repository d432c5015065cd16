"""Posterior samplers (one file each, one shared loop) and the table that names them."""
from .ads import ActiveResult, ActiveSubsampling
from .base import DiffusionSampler, Posterior
from .dds import DDS
from .dps import DPS
from .mbir import DiffusionMBIR
from .reddiff import REDDiff
from .table import SAMPLERS, SamplerSpec, sampler_spec

__all__ = ["ActiveResult", "ActiveSubsampling", "DDS", "DPS", "DiffusionMBIR", "DiffusionSampler", "Posterior",
           "REDDiff", "SAMPLERS", "SamplerSpec", "sampler_spec"]
