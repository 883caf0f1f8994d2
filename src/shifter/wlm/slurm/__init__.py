"""Slurm integration: the SPANK shim (``spank_shifter.c``) and what a job asks of Shifter."""
