"""Benchmark helpers: PyTorch twins of the tl_jax models (`tl_jax.bench.torch_models`, needs
torch) for the like-for-like train-step throughput comparison in launch/benchmark.py."""
