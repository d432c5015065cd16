"""Posterior samplers (one file each, one shared loop) and classical baselines."""
from .base import DiffusionSampler, Posterior
from .baselines import fbp, sense, total_variation, tv_reconstruction, zero_filled
from .dps import DPS
from .reddiff import REDDiff

__all__ = ["DiffusionSampler", "Posterior", "DPS", "REDDiff",
           "fbp", "sense", "total_variation", "tv_reconstruction", "zero_filled"]
