"""Training core: state, optimisers/schedules, masks, jitted steps, metrics, callbacks, loop.

Import submodules directly (`from tl_jax.train import optim`); this package import stays light.
"""
