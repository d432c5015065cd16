"""Readers, writers and generators of images: fastMRI, NIfTI, image folders, phantoms, synthetic brains,
and real training images (JPEG, DICOM, NIfTI, ``.mat``) split by patient (``real_images``).

Submodules are imported on use (``from diffinverse.datasets.fastmri import FastMRIFile``) so that
importing the package does not pull in nilearn or h5py.
"""
