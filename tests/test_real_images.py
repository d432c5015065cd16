"""Readers of real training images (JPEG/PNG, DICOM, NIfTI, .mat), the split by patient, and the
``real-mri:`` / ``real-ct:`` sources of ``diffinverse-train``, on tiny files written here."""
import json

import numpy as np
import pytest
import torch

from diffinverse.datasets import real_images as R
from diffinverse.imaging import magnitude


def _gradient(h=32, w=32):
    """A smooth test image in [0, 1] with structure in both directions."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    return (0.2 + 0.5 * xx + 0.3 * np.sin(3 * yy)).clip(0, 1)


def _write_png(path, a):
    from PIL import Image

    Image.fromarray((a * 255).round().astype(np.uint8), mode="L").save(path)


def _write_dicom(path, pixels, *, modality="MR", slope=1.0, intercept=0.0, patient="P1", frames=None,
                 transfer_syntax=None, photometric="MONOCHROME2"):
    pytest.importorskip("pydicom", reason="DICOM needs pydicom (the bench extra)")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = modality, patient
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if transfer_syntax is not None:  # a compressed syntax: the bytes are encapsulated (not really compressed)
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def _write_nifti(path, vol):
    import nibabel as nib

    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), str(path))


# ----------------------------------------------------------------------------- readers


def test_read_jpeg_halves_by_area_average_and_blurs(tmp_path):
    a = _gradient()
    _write_png(tmp_path / "a.png", a)  # lossless, so the expected values are exact
    full = R.read_jpeg(tmp_path / "a.png")
    assert full.shape == (32, 32) and torch.allclose(full, torch.from_numpy(np.round(a * 255) / 255).float(), atol=1e-6)
    half = R.read_jpeg(tmp_path / "a.png", scale=2)
    assert half.shape == (16, 16)
    assert torch.allclose(half, full.reshape(16, 2, 16, 2).mean((1, 3)), atol=1e-6)
    blurred = R.read_jpeg(tmp_path / "a.png", scale=2, blur=1.0)
    assert (blurred - half).abs().max() > 1e-3 and abs(float(blurred.mean() - half.mean())) < 0.01

    from PIL import Image

    Image.fromarray((a * 255).astype(np.uint8), mode="L").save(tmp_path / "b.jpg", quality=95)
    jpg = R.read_jpeg(tmp_path / "b.jpg")
    assert (jpg - full).abs().mean() < 0.02


def test_corrupt_jpeg_is_named_when_read(tmp_path):
    (tmp_path / "7.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    images = R.RealImages(tmp_path, split="all")  # indexing reads no pixels (lazy)
    with pytest.raises(ValueError, match=r"7\.jpg: not a readable image"):
        images[0]


def test_read_dicom_applies_the_modality_lut_frames_and_monochrome1(tmp_path):
    px = np.arange(2 * 4 * 6).reshape(2, 4, 6) * 10
    _write_dicom(tmp_path / "ct.dcm", px, modality="CT", slope=2.0, intercept=-1024.0, frames=2)
    x = R.read_dicom(tmp_path / "ct.dcm")
    assert x.shape == (2, 4, 6) and torch.equal(x, torch.from_numpy(px * 2.0 - 1024.0).float())
    _write_dicom(tmp_path / "m1.dcm", px[0], photometric="MONOCHROME1")
    y = R.read_dicom(tmp_path / "m1.dcm")
    assert torch.equal(y[0], torch.from_numpy(px[0].max() - px[0]).float())


def test_dicom_that_cannot_be_decoded_is_skipped_with_a_warning_naming_it(tmp_path):
    _write_dicom(tmp_path / "ok.dcm", np.full((8, 8), 100), patient="A")
    # MPEG2 has no pydicom pixel decoder at all, whatever plugins are installed
    _write_dicom(tmp_path / "mpeg.dcm", np.full((8, 8), 100), patient="B", transfer_syntax="1.2.840.10008.1.2.4.100")
    ok, why = R.dicom_decodable(tmp_path / "mpeg.dcm")
    assert not ok and "MPEG2" in why
    with pytest.warns(UserWarning, match=r"skipping .*mpeg\.dcm: .*MPEG2"):
        images = R.RealImages(tmp_path, split="all")
    assert [r.path.name for r in images.refs] == ["ok.dcm"]


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_corrupt_dicom_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    with pytest.raises(ValueError, match=r"broken\.dcm"):
        R.RealImages(tmp_path, split="all")


def test_dicom_without_suffix_is_found_by_its_marker_and_modality_filters(tmp_path):
    _write_dicom(tmp_path / "CT.1.2.3.4", np.full((8, 8), 1000), modality="CT", intercept=-1024.0)
    _write_dicom(tmp_path / "mr.dcm", np.full((8, 8), 5), modality="MR")
    (tmp_path / "notes.txt").write_text("a box 1 2 3 4")
    assert len(R.RealImages(tmp_path, split="all")) == 2
    ct = R.RealImages(tmp_path, split="all", modality="CT", ct=True)
    assert [r.path.name for r in ct.refs] == ["CT.1.2.3.4"]
    assert torch.allclose(ct.read(0), torch.full((1, 8, 8), 1000 - 1024 + 1000.0))  # HU + 1000


def test_nifti_slices_along_an_axis_drop_empty_ones(tmp_path):
    vol = np.zeros((10, 12, 6))
    vol[2:8, 3:9, 1:5] = np.arange(1, 5)  # slices 0 and 5 along axis 2 are empty
    _write_nifti(tmp_path / "v.nii.gz", vol)
    assert R.read_nifti_slices(tmp_path / "v.nii.gz", axis=0).shape == (10, 12, 6)
    images = R.RealImages(tmp_path, split="all", axis=2)
    assert [r.index for r in images.refs] == [1, 2, 3, 4]
    assert torch.equal(images.read(1)[0], torch.from_numpy(vol[:, :, 2]).float())
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    with pytest.raises(ValueError, match=r"bad\.nii\.gz: not a readable NIfTI"):
        R.RealImages(tmp_path, split="all")


def test_read_mat_by_key_or_alone_and_complex(tmp_path):
    import scipy.io

    a = _gradient(8, 10)
    scipy.io.savemat(tmp_path / "one.mat", {"dcm": (a * 1000).astype(np.int16), "note": "x"})
    assert torch.equal(R.read_mat(tmp_path / "one.mat"), torch.from_numpy((a * 1000).astype(np.int16)).float()[None])
    scipy.io.savemat(tmp_path / "two.mat", {"img": a, "map": a.T.copy(), "z": (a + 1j * a)[None].repeat(3, 0)})
    with pytest.raises(ValueError, match=r"two\.mat: several .*img.*map"):
        R.read_mat(tmp_path / "two.mat")
    with pytest.raises(ValueError, match=r"two\.mat: no variable 'nope'"):
        R.read_mat(tmp_path / "two.mat", key="nope")
    z = R.read_mat(tmp_path / "two.mat", key="z", axis=0)
    assert z.shape == (3, 2, 8, 10) and torch.allclose(z[1, 1], torch.from_numpy(a).float())
    (tmp_path / "junk.mat").write_bytes(b"MATLAB 5.0 but nothing more")
    with pytest.raises(ValueError, match=r"junk\.mat: not a readable \.mat"):
        R.read_mat(tmp_path / "junk.mat")


# ----------------------------------------------------------------------------- split


def _refs(keys):
    from pathlib import Path

    return [R.ImageRef(Path(f"{i}.x"), 0, "jpeg", k) for i, k in enumerate(keys)]


def test_numbered_files_split_by_blocks_with_guards():
    refs = _refs([f"number:{n}" for n in range(1, 3065)])
    labels = R.split_of(refs, 0.1)
    held = [n for n, lab in zip(range(1, 3065), labels) if lab == "heldout"]
    gap = [n for n, lab in zip(range(1, 3065), labels) if lab == "gap"]
    assert held == [*range(401, 501), *range(1401, 1501), *range(2401, 2501)]
    assert gap == [*range(385, 401), *range(501, 517), *range(1385, 1401), *range(1501, 1517),
                   *range(2385, 2401), *range(2501, 2517)]
    assert labels.count("train") == 3064 - 300 - 96


def test_patients_are_never_on_both_sides_and_the_split_is_stable():
    keys = [f"dicom:P{i // 3}" for i in range(300)]  # 100 patients, 3 images each
    labels = R.split_of(_refs(keys), 0.2)
    sides = {}
    for k, lab in zip(keys, labels):
        sides.setdefault(k, set()).add(lab)
    assert all(len(s) == 1 for s in sides.values())
    n_held = sum(s == {"heldout"} for s in sides.values())
    assert 8 <= n_held <= 35  # a hash threshold at 0.2 of 100 patients
    # adding patients does not move the existing ones
    more = R.split_of(_refs(keys + [f"dicom:Q{i}" for i in range(50)]), 0.2)
    assert more[:300] == labels
    # of two patients one is held out; a single patient never is
    two = R.split_of(_refs(["a", "a", "b"]), 0.1)
    assert sorted(set(two)) == ["heldout", "train"] and two[0] == two[1]
    assert R.split_of(_refs(["only", "only"]), 0.5) == ["train", "train"]


def test_patient_key_finds_ixi_and_tcga_subjects(tmp_path):
    assert R.patient_key(tmp_path / "IXI012-HH-1211_T1.nii.gz") == "IXI012"
    assert R.patient_key(tmp_path / "T1_AX_TCGA-FG-6692_Si_se.nii.gz") == "TCGA-FG-6692"
    assert R.patient_key(tmp_path / "sub" / "scan.mat", tmp_path) == "sub/scan.mat"


def test_train_and_heldout_splits_of_a_folder_are_disjoint_by_patient(tmp_path):
    for p in range(6):
        for s in range(2):
            _write_dicom(tmp_path / f"p{p}_{s}.dcm", np.full((8, 8), 10 + p), patient=f"P{p}")
    train = R.RealImages(tmp_path, split="train", heldout_fraction=0.3)
    held = R.RealImages(tmp_path, split="heldout", heldout_fraction=0.3)
    assert len(train) + len(held) == 12 and held.patients and not set(train.patients) & set(held.patients)
    assert train.refs == R.RealImages(tmp_path, split="train", heldout_fraction=0.3).refs


# ----------------------------------------------------------------------------- training source


def test_items_and_crops_are_in_the_prior_range_with_a_smooth_phase(tmp_path):
    a = _gradient(40, 48)
    _write_png(tmp_path / "1.png", a)
    images = R.RealImages(tmp_path, split="all", jpeg_scale=1)
    x = images[0]
    assert x.shape == (1, 40, 48)
    assert abs(float(torch.quantile(x.abs().flatten(), 0.995)) - 1) < 1e-5

    whole = R.RealImageCrops(images, crop=None, flips=False)
    state = torch.random.get_rng_state()
    z = whole.sample(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert z.shape == (2, 2, 40, 48)
    assert torch.allclose(magnitude(z), x.expand(2, -1, -1), atol=1e-5)  # the phase leaves the magnitude alone
    phase = torch.atan2(z[:, 1], z[:, 0])
    assert not torch.allclose(phase[0], phase[1])  # a new phase per draw
    step = torch.remainder(phase[:, :, 1:] - phase[:, :, :-1] + torch.pi, 2 * torch.pi) - torch.pi
    assert step.abs().max() < 0.5  # smooth: small pixel-to-pixel phase steps
    assert torch.equal(z, whole.sample(2, generator=torch.Generator().manual_seed(0)))

    crops = R.RealImageCrops(images, crop=16, complex=False, noise=0.05)
    c = crops.sample(5, generator=torch.Generator().manual_seed(1))
    assert c.shape == (5, 1, 16, 16)


def test_complex_file_keeps_its_phase_and_real_source_rejects_it(tmp_path):
    import scipy.io

    a = _gradient(16, 16)
    z = a * np.exp(1j * np.linspace(0, 1, 16))[None]
    scipy.io.savemat(tmp_path / "z.mat", {"k": z})
    images = R.RealImages(tmp_path, split="all")
    out = R.RealImageCrops(images, crop=None, flips=False).sample(1, generator=torch.Generator().manual_seed(0))
    ref = images[0]
    assert torch.allclose(out[0], ref, atol=1e-6)  # no random phase on top of the file's own
    with pytest.raises(ValueError, match=r"z\.mat: complex image"):
        R.RealImageCrops(images, crop=8, complex=False).sample(1, generator=torch.Generator())


def test_empty_or_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        R.RealImages(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("nothing")
    with pytest.raises(FileNotFoundError, match="no readable"):
        R.RealImages(tmp_path)
    _write_png(tmp_path / "x.png", _gradient())
    with pytest.raises(FileNotFoundError, match="no images in the 'heldout' split"):
        R.RealImages(tmp_path, split="heldout")


def test_train_command_mixes_real_and_generated_sources(tmp_path):
    from safetensors import safe_open

    from diffinverse.priors import train as T

    data = tmp_path / "data"
    data.mkdir()
    for i in range(1, 5):
        _write_png(data / f"{i}.png", np.roll(_gradient(48, 48), 5 * i, axis=1))
    common = ["--steps", "1", "--batch-size", "4", "--crop", "16", "--base-channels", "8", "--channel-mult", "1,2",
              "--num-res-blocks", "1", "--device", "cpu", "--no-progress"]
    T.main(["--data", f"real-mri:{data}@0.7", "--data", "mri-brain@0.3", "--out", str(tmp_path / "run"), *common])
    with safe_open(str(tmp_path / "run" / T.FINAL), framework="pt") as f:
        cfg = json.loads(f.metadata()["config"])
    assert cfg["kwargs"]["channels"] == 2
    assert cfg["metadata"]["data"] == f"real-mri:{data}@0.7 mri-brain@0.3"
    assert cfg["metadata"]["heldout_fraction"] == "0.1"

    source, implied = T._build_data(f"real-ct:{data}", crop=16, image_size=64, axis=2, device="cpu")
    assert implied["channels"] == 1 and source.sample(3, generator=torch.Generator()).shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="different channel counts"):
        T.main(["--data", f"real-ct:{data}@1", "--data", "mri-brain@1", "--out", str(tmp_path / "bad"), *common])
    with pytest.raises(ValueError, match="need a weight each"):
        T.main(["--data", f"real-mri:{data}", "--data", "mri-brain@1", "--out", str(tmp_path / "bad"), *common])


def test_other_modalities_are_filtered_before_the_decoder_check(tmp_path, recwarn):
    _write_dicom(tmp_path / "mr.dcm", np.full((8, 8), 7), modality="MR")
    _write_dicom(tmp_path / "ct.dcm", np.full((8, 8), 7), modality="CT", transfer_syntax="1.2.840.10008.1.2.4.100")
    images = R.RealImages(tmp_path, split="all", modality="MR")
    assert [r.path.name for r in images.refs] == ["mr.dcm"]
    assert not [w for w in recwarn if "skipping" in str(w.message)]


def test_ct_nifti_drops_slices_of_air_in_hounsfield_units(tmp_path):
    vol = np.full((16, 16, 5), -1000.0)  # air everywhere
    vol[2:14, 2:14, 1:4] = 40.0  # soft tissue in slices 1-3
    _write_nifti(tmp_path / "ct.nii.gz", vol)
    images = R.RealImages(tmp_path, split="all", ct=True)
    assert [r.index for r in images.refs] == [1, 2, 3]
    assert float(images.read(0).min()) == 0.0 and float(images.read(0).max()) == 1040.0


def test_max_side_area_averages_large_images_after_the_hounsfield_shift(tmp_path):
    hu = np.arange(10 * 7).reshape(10, 7) * 4 - 1100  # some pixels below air: clamped before averaging
    _write_dicom(tmp_path / "ct.dcm", hu + 1100, modality="CT", intercept=-1100.0, patient="A")
    full = R.RealImages(tmp_path, split="all", ct=True).read(0)
    small = R.RealImages(tmp_path, split="all", ct=True, max_side=4).read(0)
    assert full.shape == (1, 10, 7) and small.shape == (1, 3, 2)  # factor ceil(10 / 4) = 3; rest dropped
    expected = (torch.from_numpy(hu[:9, :6]).float() + 1000).clamp_min(0).reshape(3, 3, 2, 3).mean((1, 3))
    assert torch.allclose(small[0], expected)
    assert torch.equal(R.RealImages(tmp_path, split="all", ct=True, max_side=10).read(0), full)  # small enough
    assert R.shrink_to(torch.ones(2, 1, 8, 8), 4).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="max_side must be >= 0"):
        R.RealImages(tmp_path, max_side=-1)
