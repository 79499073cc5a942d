"""Repetition sweeps: `grid` (methods x N x seeds, one workdir per cell, resumable, multi-host
commands) and `vmapped` (K seeds of one configuration as one compiled, seed-sharded program).

Submodules are imported explicitly (`from tl_jax.sweep import grid`) so that the grid launcher
does not pay for importing JAX.
"""
