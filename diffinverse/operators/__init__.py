"""Forward models ``y = A(x) + noise``; every operator is a ``deepinv.physics.LinearPhysics``."""
from .blur import Blur, gaussian_kernel, motion_kernel
from .coils import estimate_coil_maps, rss, sense_combine, simulate_coil_maps
from .ct import CT, ramp_filter
from .inpainting import Inpainting, box_mask, random_mask
from .masks import equispaced_lines, random_lines, variable_density_2d
from .mri import MultiCoilMRI, SingleCoilMRI, fft2c, ifft2c, to_channels, to_complex
from .norm import operator_norm_squared
from .superres import SuperResolution
from .volume import SliceStack, fold_slices, unfold_slices

__all__ = [
    "Blur", "gaussian_kernel", "motion_kernel",
    "estimate_coil_maps", "rss", "sense_combine", "simulate_coil_maps",
    "CT", "ramp_filter",
    "Inpainting", "box_mask", "random_mask",
    "equispaced_lines", "random_lines", "variable_density_2d",
    "MultiCoilMRI", "SingleCoilMRI", "fft2c", "ifft2c", "to_channels", "to_complex",
    "operator_norm_squared",
    "SuperResolution",
    "SliceStack", "fold_slices", "unfold_slices",
]
