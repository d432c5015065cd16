"""What is known about ``x``: denoisers ``D(x, sigma) = E[x0 | x0 + sigma * n = x]`` (VE form)."""
from . import schedules
from .base import Prior, RangeAdapter, VPDenoiser
from .checkpoints import available, load, save
from .gmm import GaussianMixture, GaussianMixturePrior
from .latent import ConvLatentPrior, LatentPrior, load_latent_diffusers
from .sampling import sample_heun
from .stack import ImageStackPrior
from .unet import UNet

__all__ = ["schedules", "Prior", "RangeAdapter", "VPDenoiser", "available", "load", "save",
           "GaussianMixture", "GaussianMixturePrior", "ImageStackPrior", "sample_heun", "UNet",
           "ConvLatentPrior", "LatentPrior", "load_latent_diffusers"]
