"""diffinverse: image reconstruction with physical forward models and diffusion-model priors.

Subpackages: :mod:`diffinverse.operators` (forward models), :mod:`diffinverse.priors`
(denoisers, training, loading), :mod:`diffinverse.samplers` (posterior samplers), :mod:`diffinverse.baselines` (SENSE, FBP, TV),
:mod:`diffinverse.datasets` (readers and generators), :mod:`diffinverse.metrics`,
:mod:`diffinverse.testing` (reusable checks), :mod:`diffinverse.reconstruct` (command line).
"""
from . import baselines, imaging, metrics, operators, priors, samplers, testing
from .operators import CT, Blur, Inpainting, MultiCoilMRI, SingleCoilMRI, SliceStack, SuperResolution
from .priors import GaussianMixturePrior, UNet, load
from .samplers import DPS, REDDiff

__version__ = "0.1.0"
__all__ = ["metrics", "operators", "priors", "samplers", "testing",
           "CT", "Blur", "Inpainting", "MultiCoilMRI", "SingleCoilMRI", "SliceStack", "SuperResolution",
           "GaussianMixturePrior", "UNet", "load", "DPS", "REDDiff", "__version__"]
