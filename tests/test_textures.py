import pytest
import torch

pytest.importorskip("skimage")

from diffinverse.datasets.textures import NaturalImageCrops, skimage_photographs  # noqa: E402


def test_photographs_are_greyscale_unit_range():
    ims = skimage_photographs()
    assert len(ims) >= 10
    for im in ims:
        assert im.ndim == 3 and im.shape[0] == 1 and min(im.shape[1:]) >= 64
        assert im.dtype == torch.float32 and 0 <= im.min() and im.max() <= 1


@pytest.mark.parametrize("channels", [1, 2])
def test_crops_shape_range_and_seed(channels):
    src = NaturalImageCrops(32, channels=channels, peak=(0.5, 1.0))
    x = src.sample(16, generator=torch.Generator().manual_seed(0))
    assert x.shape == (16, channels, 32, 32) and torch.isfinite(x).all()
    mag = x.square().sum(1).sqrt()
    peaks = mag.flatten(1).amax(1)
    assert (peaks >= 0.5 - 1e-5).all() and (peaks <= 1 + 1e-5).all()   # per-crop peak in the range
    if channels == 1:
        assert x.min() >= 0
    else:
        assert x[:, 1].abs().max() > 0.05   # a nonzero phase
    assert x.flatten(1).std(1).median() > 0.03  # mostly texture (a crop of sky may be flat)
    y = src.sample(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, y)


def test_rejects_bad_channels():
    with pytest.raises(ValueError, match="channels must be 1 or 2"):
        NaturalImageCrops(32, channels=3)
