"""Repetition sweeps: `grid` expands methods x N x seeds into cells (one workdir per seed),
groups each cell's seeds into units that run as one compiled program (tl_jax.experiment.run_seeds),
and prints one command per host.

Submodules are imported explicitly (`from tl_jax.sweep import grid`) so that the grid launcher
does not pay for importing JAX.
"""
