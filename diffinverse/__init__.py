"""diffinverse: image reconstruction with physical forward models and diffusion-model priors.

Modules: :mod:`diffinverse.operators` (forward models), :mod:`diffinverse.priors` (denoisers,
training, loading), :mod:`diffinverse.samplers` (posterior samplers and their table),
:mod:`diffinverse.baselines` (zero-filled, SENSE, FBP, TV), :mod:`diffinverse.imaging` (complex
magnitude, prior-range scaling), :mod:`diffinverse.pipelines` (k-space to image on tensors),
:mod:`diffinverse.tasks` (the end-to-end problems), :mod:`diffinverse.datasets` (readers and
generators), :mod:`diffinverse.metrics`, :mod:`diffinverse.testing` (reusable checks),
:mod:`diffinverse.reconstruct` (command line). Layout and conventions: ``docs/design.md``.
"""
from . import baselines, imaging, metrics, operators, priors, samplers, testing
from .operators import CT, Blur, Inpainting, MultiCoilMRI, SingleCoilMRI, SliceStack, SuperResolution
from .priors import GaussianMixturePrior, UNet, load
from .samplers import DDS, DPS, ActiveSubsampling, DiffusionMBIR, REDDiff

__version__ = "0.1.0"
__all__ = ["baselines", "imaging", "metrics", "operators", "priors", "samplers", "testing",
           "CT", "Blur", "Inpainting", "MultiCoilMRI", "SingleCoilMRI", "SliceStack", "SuperResolution",
           "GaussianMixturePrior", "UNet", "load",
           "ActiveSubsampling", "DDS", "DPS", "DiffusionMBIR", "REDDiff", "__version__"]
