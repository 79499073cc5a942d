"""Glue for the seed-document scenarios (configs/seed00*_*.py).

Modules: `gtsrb` (seed 004's load-time preprocessing, cached as npz), `tables` (train/val/test
Markdown tables from run summaries), `gradcam_panel` (seed 000's Grad-CAM panel from run
workdirs). The scenario models live in tl_jax.models: 'seed003_cnn' (tl_jax.models.cnn) and
EfficientNet-Lite0's `frozen_blocks` cut (tl_jax.models.efficientnet).
"""
