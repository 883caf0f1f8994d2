"""Shifter: run user-defined OCI images on HPC systems as the calling user."""

__version__ = "0.1.0"
