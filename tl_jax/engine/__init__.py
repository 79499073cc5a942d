"""The one training engine: learners (tl_jax.engine.learners) and the K-seed compiled loop
(tl_jax.engine.fit). Every run of tl_jax - one seed or thirty, any method - goes through it.

Import submodules directly (`from tl_jax.engine import fit`).
"""
