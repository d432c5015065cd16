"""Readers, writers and generators of images: fastMRI, NIfTI, image folders, phantoms, synthetic brains.

Submodules are imported on use (``from diffinverse.datasets.fastmri import FastMRIFile``) so that
importing the package does not pull in nilearn or h5py.
"""
