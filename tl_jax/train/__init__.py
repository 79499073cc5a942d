"""Training core: state, optimisers/schedules, masks, jitted steps, metrics, callbacks,
checkpoints, TensorBoard event files. The loop that runs them is tl_jax.engine.fit.

Import submodules directly (`from tl_jax.train import optim`); this package import stays light.
"""
