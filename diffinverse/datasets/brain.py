"""Domain-randomised complex head MR slices built from the MNI152 template that nilearn ships.

The MNI152 (2009a, 1 mm) T1 template and its grey/white-matter probability maps are read from
files inside the nilearn package (no download). The template is skull-stripped and very smooth
(an average of 152 brains), while real scans show skull, scalp and fat, fine texture, noise,
coil shading, phase and other contrasts. Each sample therefore randomises the domain:

1. an axial slice of the template (``split="train"``: every usable slice outside a held-out
   contiguous slab; ``split="test"``: the slab, with a 4-slice gap on each side);
2. a random similarity transform (rotation within +-15 degrees, scale 0.85-1.25, shift, left-right
   flip) applied to the tissue maps;
3. tissue probabilities: grey matter, white matter, CSF (= brain mask - GM - WM), sharpened by a
   random power, plus synthetic shells outside the brain at random thicknesses from a 3D distance
   map (CSF rim, inner table, diploe/marrow, outer table, muscle, fat, skin), made irregular by a
   smooth random field;
4. tissue intensities per sample from a contrast family (T1-, T2-, PD-, FLAIR-like or random),
   for T1-like partly mixed with the template's own T1 intensities;
5. fine multiplicative texture, a smooth multiplicative bias field;
6. a smooth random phase (constant + linear ramp + low-order field) and complex Gaussian noise;
   optionally (``magnitude_fraction``) the slice is then replaced by its magnitude with zero phase,
   as in the magnitude images scanners export, whose noise is Rician;
7. scaling so that the magnitude's 99.5th percentile is 1 (over the whole 256 x 256 slice; a
   crop is taken afterwards, so crops keep the slice's scale).

Slices are 256 x 256 pixels at 1 mm before the random scaling, anterior up.

:func:`test_slab_volume` gives the held-out slab itself as one coherent volume (the template's own
T1 intensities, no domain randomisation): a real brain volume for 3-D MRI experiments.

References:
    Fonov et al., "Unbiased average age-appropriate atlases for pediatric studies", NeuroImage 2011
    (MNI152 2009 templates). Billot et al., "SynthSeg: domain randomisation for segmentation of
    brain scans of any contrast and resolution", Medical Image Analysis 2023 (the
    domain-randomisation idea).
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BrainSlices", "CANVAS", "TEST_SLAB", "save_template", "smooth_random_phase"]

CANVAS = 256
# Held-out slab: template z indices [88, 104) (about 16-32 mm above the AC plane); training
# slices keep 4 slices away from it on each side.
TEST_SLAB = (88, 104)
_GAP = 4
_DIST_SCALE = 10.0
_QSCALE = (1.0, 1.0, 1.0, 1.2, 1.0)  # channel maxima, for uint8 template files  # distance map stored as exp(-d / 10 mm), so zero padding means "far away"

# Tissue order: GM, WM, CSF, bone, marrow, muscle, fat, skin. (low, high) intensity per family.
_FAMILIES = {
    "t1": [(.45, .65), (.75, .95), (.03, .25), (0, .08), (.5, .9), (.3, .5), (.8, 1.), (.4, .7)],
    "t2": [(.45, .65), (.3, .45), (.8, 1.), (0, .08), (.3, .7), (.15, .35), (.5, .85), (.3, .6)],
    "pd": [(.7, .85), (.55, .7), (.75, .95), (0, .1), (.6, .9), (.4, .6), (.7, 1.), (.5, .8)],
    "flair": [(.55, .7), (.4, .55), (0, .1), (0, .05), (.4, .8), (.2, .4), (.6, .9), (.4, .6)],
    "random": [(0, 1.)] * 3 + [(0, .15)] + [(0, 1.)] * 4,
}
_FAMILY_PROBS = torch.tensor([.25, .25, .15, .15, .2])
# Shell thickness ranges (mm): CSF rim, inner table, diploe, outer table, muscle, fat, skin.
_SHELLS = [(.5, 2.5), (1., 2.), (1., 4.), (1., 2.), (1., 4.), (2., 6.), (1., 2.5)]


@functools.lru_cache(maxsize=1)
def _template() -> tuple[torch.Tensor, np.ndarray]:
    """Tissue maps of all usable axial slices, ``(S, 5, 256, 256)`` float16, and their z indices.

    Channels: GM, WM, CSF probabilities, T1 template intensity (0..1), exp(-d / 10) with ``d``
    the 3D distance (mm) to the brain mask.
    """
    from nilearn import datasets
    from scipy import ndimage

    t1 = datasets.load_mni152_template(resolution=1).get_fdata(dtype=np.float32)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32) > 0.5
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    csf = np.clip(mask - gm - wm, 0, 1)
    t1 = t1 / max(float(np.percentile(t1[mask], 99.5)), 1e-6)
    dist = ndimage.distance_transform_edt(~mask).astype(np.float32)
    vol = np.stack([gm, wm, csf, np.clip(t1, 0, 1.2), np.exp(-dist / _DIST_SCALE)])  # (5, X, Y, Z)

    area = mask.sum(axis=(0, 1))
    z_ok = np.flatnonzero(area >= 0.3 * area.max())
    # (5, X, Y, Z) -> (Z, 5, Y, X) with rows = y reversed (anterior up), columns = x.
    sl = torch.from_numpy(np.ascontiguousarray(vol[..., z_ok].transpose(3, 0, 2, 1)[:, :, ::-1]))
    H, W = sl.shape[-2:]
    ph, pw = CANVAS - H, CANVAS - W
    sl = F.pad(sl, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    # Distance channel: padding means outside the template volume, i.e. far from the brain.
    return sl.to(torch.float16), z_ok


def save_template(path: str | os.PathLike) -> Path:
    """Write the precomputed tissue maps to a compressed ``.npz`` (uint8, about 10 MB).

    For machines without nilearn: pass the file as ``BrainSlices(..., template_file=path)``
    (``diffinverse-train --brain-template PATH``). Values are quantised to 1/255 (T1 to 1.2/255).
    """
    maps, z = _template()
    q = (maps.float() / torch.tensor(_QSCALE)[:, None, None] * 255).round().clamp(0, 255).to(torch.uint8)
    path = Path(path)
    np.savez_compressed(path, maps=q.numpy(), z=z)
    return path


def _load_template_file(path: str | os.PathLike) -> tuple[torch.Tensor, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as f:
        maps, z = torch.from_numpy(f["maps"]), f["z"]
    if maps.ndim != 4 or maps.shape[1:] != (5, CANVAS, CANVAS) or len(z) != maps.shape[0]:
        raise ValueError(f"{path}: not a brain template file (maps {tuple(maps.shape)}, {len(z)} z indices)")
    return (maps.float() / 255 * torch.tensor(_QSCALE)[:, None, None]).to(torch.float16), z


def _smooth(n: int, res: int, generator: torch.Generator, device: torch.device,
            size: tuple[int, int] = (CANVAS, CANVAS)) -> torch.Tensor:
    """Smooth random field ``(n, 1, *size)``: ``res x res`` standard normals, bicubic upsampled."""
    coarse = torch.randn(n, 1, res, res, generator=generator, device=device)
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=True)


def _uniform(shape, lo, hi, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


def smooth_random_phase(n: int, size: tuple[int, int] = (CANVAS, CANVAS), *, generator: torch.Generator,
                        field_generator: torch.Generator | None = None,
                        device: str | torch.device = "cpu") -> torch.Tensor:
    """The smooth random phase of :class:`BrainSlices` (step 6): constant + linear ramp + low-order field.

    ``phase = phi0 + a_x x + a_y y + b f(x, y)`` on ``x, y`` in ``[-1, 1]``, with ``phi0, a_x, a_y``
    uniform in ``[-pi, pi]``, ``b`` uniform in ``[0, pi]`` and ``f`` a 3 x 3 grid of standard normals
    upsampled bicubically to ``size``. Multiply a magnitude image by ``exp(i phase)`` to make it a
    complex image like the ``mri-brain`` training data.

    Args:
        n: number of phase maps.
        size: ``(H, W)`` in pixels.
        generator: CPU generator of the per-map scalars.
        field_generator: generator (on ``device``) of the smooth field; defaults to ``generator``.
        device: where the maps are made.

    Returns:
        float32 ``(n, H, W)`` phase in radians.
    """
    dev = torch.device(device)
    g_dev = generator if field_generator is None else field_generator
    H, W = size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H, device=dev), torch.linspace(-1, 1, W, device=dev), indexing="ij")
    phi0 = _uniform((n, 1, 1), -math.pi, math.pi, generator).to(dev)
    ramp = _uniform((n, 2, 1, 1), -math.pi, math.pi, generator).to(dev)
    phi_amp = _uniform((n, 1, 1), 0.0, math.pi, generator).to(dev)
    return phi0 + ramp[:, 0] * xx + ramp[:, 1] * yy + phi_amp * _smooth(n, 3, g_dev, dev, size=(H, W))[:, 0]


class BrainSlices:
    """Random complex head MR slices, ``(n, 2, H, W)`` float32 (real, imag).

    Args:
        split: ``"train"`` or ``"test"`` (disjoint slabs of the template, see :data:`TEST_SLAB`).
        size: side of random square crops; ``None`` gives whole 256 x 256 slices.
        generator: default source of randomness for :meth:`sample` (a fresh generator seeded 0 if
            ``None``); the global RNG is never used.
        device: where the slices are synthesised (the template is copied there once).
        template_file: a file from :func:`save_template`, used instead of nilearn's template.
        magnitude_fraction: probability that a slice is a magnitude image (``|z|`` in the real
            channel, zero imaginary channel, Rician noise) instead of a complex one.
        noise_range: range of the complex Gaussian noise's standard deviation per channel (drawn
            log-uniformly), relative to the noise-free magnitude's 99.5th percentile.

    Attributes:
        slices: template z indices this split draws from.

    Example:
        >>> data = BrainSlices("train", size=64, generator=torch.Generator().manual_seed(0))
        >>> x = data.sample(16)          # (16, 2, 64, 64), magnitude scaled per whole slice

    References:
        See the module docstring.
    """

    def __init__(self, split: str = "train", *, size: int | None = None, generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu", template_file: str | os.PathLike | None = None,
                 magnitude_fraction: float = 0.0, noise_range: tuple[float, float] = (0.003, 0.06)):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 0 <= magnitude_fraction <= 1:
            raise ValueError(f"magnitude_fraction must lie in [0, 1], got {magnitude_fraction}")
        if not 0 < noise_range[0] <= noise_range[1]:
            raise ValueError(f"noise_range must be (low, high) with 0 < low <= high, got {noise_range}")
        if size is not None and not 1 <= size <= CANVAS:
            raise ValueError(f"size must be in [1, {CANVAS}] or None, got {size}")
        maps, z_ok = _template() if template_file is None else _load_template_file(template_file)
        lo, hi = TEST_SLAB
        keep = (z_ok >= lo) & (z_ok < hi) if split == "test" else (z_ok < lo - _GAP) | (z_ok >= hi + _GAP)
        self.split = split
        self.size = size
        self.magnitude_fraction = float(magnitude_fraction)
        self.noise_range = (float(noise_range[0]), float(noise_range[1]))
        self.device = torch.device(device)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.slices = torch.from_numpy(z_ok[keep].copy())
        self._maps = maps[torch.from_numpy(np.flatnonzero(keep))].to(self.device)

    def __len__(self) -> int:
        return len(self.slices)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` slices.

        Args:
            n: number of images.
            generator: CPU ``torch.Generator``; defaults to the one given at construction.

        Returns:
            float32 ``(n, 2, size, size)`` on :attr:`device`; the complex magnitude of every whole
            slice has its 99.5th percentile at 1.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        g = self.generator if generator is None else generator
        dev = self.device
        # Per-sample scalars come from g; large fields from a device generator seeded by g.
        g_dev = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        idx = torch.randint(0, len(self.slices), (n,), generator=g)
        maps = self._maps[idx.to(dev)].float()

        # 2. random similarity transform (affine_grid maps output to input coordinates)
        angle = _uniform(n, -math.pi / 12, math.pi / 12, g)
        scale = _uniform(n, 0.85, 1.25, g)
        flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        shift = _uniform((n, 2), -0.06, 0.06, g)
        cos, sin = angle.cos() / scale, angle.sin() / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                             torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1).to(dev)
        grid = F.affine_grid(theta, [n, 5, CANVAS, CANVAS], align_corners=False)
        maps = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        gm, wm, csf, t1, e = maps.unbind(1)

        # 3. tissue probabilities: sharpened brain tissues, shells outside the brain
        brain = (gm + wm + csf).clamp(0, 1)
        gamma = _uniform((n, 1, 1), 1.0, 2.5, g).to(dev)
        sharp = torch.stack([gm, wm, csf], 1).clamp_min(0) ** gamma[:, None]
        sharp = sharp / sharp.sum(1, keepdim=True).clamp_min(1e-6) * brain[:, None]
        dist = -_DIST_SCALE * e.clamp_min(1e-12).log()
        dist = dist * (1 + 0.25 * _smooth(n, 6, g_dev, dev)[:, 0]).clamp_min(0.3)
        bounds = torch.cumsum(torch.stack([_uniform(n, lo, hi, g) for lo, hi in _SHELLS], 1), 1)
        bounds = torch.cat([torch.zeros(n, 1), bounds], 1).to(dev)[:, :, None, None]
        edge = torch.sigmoid((dist[:, None] - bounds) / 0.4)
        layers = (edge[:, :-1] - edge[:, 1:]) * (1 - brain[:, None])  # (n, 7, H, W)
        bone = layers[:, 1] + layers[:, 3]
        probs = torch.cat([sharp[:, :2], sharp[:, 2:3] + layers[:, :1], bone[:, None], layers[:, 2:3],
                           layers[:, 4:]], 1)  # (n, 8, H, W): GM WM CSF bone marrow muscle fat skin

        # 4. intensities from a contrast family
        fam = torch.multinomial(_FAMILY_PROBS, n, replacement=True, generator=g)
        ranges = torch.tensor(list(_FAMILIES.values()), dtype=torch.float32)[fam]  # (n, 8, 2)
        c = ranges[..., 0] + (ranges[..., 1] - ranges[..., 0]) * torch.rand(n, 8, generator=g)
        w_t1 = torch.where(fam == 0, _uniform(n, 0.0, 0.6, g), torch.zeros(n))
        c, w_t1 = c.to(dev), w_t1.to(dev)[:, None, None]
        mag_brain = (c[:, :3, None, None] * probs[:, :3]).sum(1)
        mag_brain = (1 - w_t1) * mag_brain + w_t1 * c[:, 1, None, None] * t1 * brain
        mag = mag_brain + (c[:, 3:, None, None] * probs[:, 3:]).sum(1)

        # 5. fine texture and bias field
        tex = 3.0 * F.avg_pool2d(torch.randn(n, 1, CANVAS, CANVAS, generator=g_dev, device=dev), 3, 1, 1,
                                 count_include_pad=False)
        tex_amp = _uniform((n, 1, 1), 0.0, 0.12, g).to(dev)
        bias_amp = _uniform((n, 1, 1), 0.0, 0.35, g).to(dev)
        mag = mag * (1 + tex_amp * tex[:, 0]).clamp_min(0) * (bias_amp * _smooth(n, 4, g_dev, dev)[:, 0]).exp()
        mag = mag / torch.quantile(mag.flatten(1), 0.995, dim=1).clamp_min(1e-6)[:, None, None]

        # 6. smooth phase and complex Gaussian noise
        phase = smooth_random_phase(n, generator=g, field_generator=g_dev, device=dev)
        lo, hi = self.noise_range
        noise_std = torch.exp(_uniform((n, 1, 1, 1), math.log(lo), math.log(hi), g)).to(dev)
        z = torch.stack([mag * phase.cos(), mag * phase.sin()], 1)
        z = z + noise_std * torch.randn(z.shape, generator=g_dev, device=dev)
        if self.magnitude_fraction > 0:
            magnitude = (torch.rand(n, generator=g) < self.magnitude_fraction).to(dev)[:, None, None, None]
            rician = torch.stack([z.square().sum(1).sqrt(), torch.zeros_like(mag)], 1)
            z = torch.where(magnitude, rician, z)

        # 7. scale: 99.5th percentile of the magnitude = 1; then crop
        q = torch.quantile(z.square().sum(1).sqrt().flatten(1), 0.995, dim=1)
        z = z / q.clamp_min(1e-6)[:, None, None, None]
        if self.size is not None and self.size < CANVAS:
            s = self.size
            top = torch.randint(0, CANVAS - s + 1, (n,), generator=g).tolist()
            left = torch.randint(0, CANVAS - s + 1, (n,), generator=g).tolist()
            z = torch.stack([z[i, :, t:t + s, l:l + s] for i, (t, l) in enumerate(zip(top, left))])
        return z.contiguous()


def test_slab_volume(*, size: int | None = None, generator: torch.Generator | None = None,
                     template_file: str | os.PathLike | None = None) -> torch.Tensor:
    """The held-out slab of the MNI152 T1 template as a complex volume in the prior's range.

    The template's own T1 intensities (skull-stripped, no domain randomisation) on the slices of
    :data:`TEST_SLAB` that no training slice comes within 4 slices of: ``D = 16`` axial slices at
    1 mm, each ``256 x 256`` (anterior up, as :class:`BrainSlices`), or reduced to ``size x size``
    by keeping the central k-space of each slice (the same head at a lower in-plane resolution,
    amplitude times ``size / 256``, as ``diffinverse.tasks.brain_images``; for an even ``size`` the
    unpaired ``-size / 2`` frequencies are set to 0, so that a real slab stays real). With a ``generator`` the
    magnitude gets a smooth phase, one function of 3-D position for the whole slab: a constant
    plus linear ramps along x, y and the slice axis, four coefficients uniform in ``[-pi, pi]``
    (radians, and radians per half field of view, 128 mm, for the ramps); without one the
    imaginary channel is 0. Finally the whole volume is scaled
    once so that its magnitude's 99.5th percentile is 1 (the ``mri-brain`` prior's convention; all
    slices share the scale).

    Args:
        size: in-plane side (``<= 256``), ``None`` for 256.
        generator: source of the phase's four random numbers (CPU); ``None`` for zero phase. The
            global RNG is not used.
        template_file: a file from :func:`save_template`, used instead of nilearn's template.

    Returns:
        float32 ``(1, 2, 16, size, size)`` (real, imaginary).

    Raises:
        ValueError: ``size`` not in ``[1, 256]``.
    """
    from diffinverse.imaging import to_prior_range
    from diffinverse.operators.mri import fft2c, ifft2c

    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= CANVAS):
        raise ValueError(f"size must be an int in [1, {CANVAS}] or None, got {size!r}")
    maps, z_ok = _template() if template_file is None else _load_template_file(template_file)
    lo, hi = TEST_SLAB
    keep = torch.from_numpy(np.flatnonzero((z_ok >= lo) & (z_ok < hi)))
    mag = maps[keep, 3].float()                                     # (D, 256, 256) T1 intensity
    z = torch.complex(mag, torch.zeros_like(mag))
    if generator is not None:
        d = mag.shape[0]
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, CANVAS), torch.linspace(-1, 1, CANVAS), indexing="ij")
        zz = (torch.arange(d, dtype=torch.float32) - (d - 1) / 2) * (2.0 / CANVAS)   # same 1 mm pitch
        c = _uniform(4, -math.pi, math.pi, generator)
        phase = c[0] + c[1] * xx + c[2] * yy + c[3] * zz[:, None, None]
        z = mag * torch.exp(1j * phase)
    if size is not None and size < CANVAS:
        top = (CANVAS - size) // 2
        k = fft2c(z)[..., top:top + size, top:top + size].clone()
        if size % 2 == 0:   # the -size/2 frequency has no +size/2 partner: drop it, so real stays real
            k[..., 0, :] = 0
            k[..., :, 0] = 0
        z = ifft2c(k) * (size / CANVAS)
    imag = z.imag if generator is not None else torch.zeros_like(z.real)   # (exactly 0, not rounding)
    x = torch.stack([z.real, imag])[None].float()                   # (1, 2, D, H, W)
    return to_prior_range(x)[0].contiguous()
