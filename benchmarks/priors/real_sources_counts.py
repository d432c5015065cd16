"""Images per real training source in ``../shared/data/train`` and their split by patient.

Prints the Markdown table of ``real_data_sources.md``: every image each ``real-mri:`` / ``real-ct:``
source indexes (as ``diffinverse-train`` does), how many are train / held out / in the guard bands of
the numbered JPEGs, the held-out patients, and the files skipped because no installed pydicom
plugin decodes them.

Usage::

    python benchmarks/priors/real_sources_counts.py [--root ../shared/data/train] [--heldout-fraction 0.1]
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from diffinverse.datasets.real_images import RealImages, split_of

SOURCES = [("real-mri", "mri_brain_figshare_cheng2017_jpg"), ("real-mri", "mri_brain_tcga_lgg_FG-6692"),
           ("real-mri", "mri_brain_ixi_small_2mm"), ("real-mri", "mri_brain_ixi_slices_dualarbnet"),
           ("real-mri", "misc_pydicom_data"), ("real-ct", "misc_pydicom_data"),
           ("real-ct", "ct_covid19_ny_sbu_axial"), ("real-ct", "ct_totalsegmentator_tests"),
           ("real-ct", "ct_totalsegmentator_tests/example_ct_dicom")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data" / "train")
    ap.add_argument("--heldout-fraction", type=float, default=0.1)
    args = ap.parse_args()
    print("| source | images | formats | patients | train | held out | guard (neither) | held-out patients | "
          "skipped files |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, sub in SOURCES:
        mri = kind == "real-mri"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            d = RealImages(args.root / sub, split="all", ct=not mri, modality="MR" if mri else "CT")
        labels = split_of(d.refs, args.heldout_fraction)
        numbered = d.refs[0].patient.startswith("number:")
        held = sorted({r.patient for r, lab in zip(d.refs, labels) if lab == "heldout"})
        if numbered:
            blocks = sorted({(int(k.split(":")[1]) - 1) // 100 for k in held})
            held_txt = "numbers " + ", ".join(f"{100 * b + 1}-{100 * b + 100}" for b in blocks)
        else:
            held_txt = ", ".join(held) or "none (one patient)"
        patients = "not recorded" if numbered else len({r.patient for r in d.refs})
        skipped = "; ".join(str(w.message).split(": ")[0].removeprefix("skipping ").replace(str(args.root) + "/", "")
                            for w in caught) or "-"
        formats = ", ".join(f"{k} {v}" for k, v in d.counts().items())
        print(f"| `{kind}:{sub}` | {len(d)} | {formats} | {patients} | {labels.count('train')} | "
              f"{labels.count('heldout')} | {labels.count('gap')} | {held_txt} | {skipped} |", flush=True)


if __name__ == "__main__":
    main()
