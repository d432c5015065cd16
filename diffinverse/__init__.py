"""diffinverse: image reconstruction with physical forward models and diffusion-model priors."""
__version__ = "0.1.0"
