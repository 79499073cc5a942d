"""Seed 004's GTSRB preprocessing, applied once at load time and cached as npz.

The seed (LeNet-5 lab): 32x32x1 input; "Pré-processamento: Blur, rotações e normalização" and
"Data Augmentation: Rotação, Blur, Equalização". Here the deterministic part runs once in NumPy
(tl_jax.data.preprocess): RGB -> grey (ITU-R 601) -> Gaussian blur (sigma 0.8 = OpenCV's sigma for
a 3x3 kernel) -> per-image histogram equalisation. Rotation is the on-device training augmentation
(`input.augment='rotate'`) and normalisation is `input.normalize` in the config.

`preprocessed_paths()` returns {'train': ..., 'test': ...} npz paths in the shared format (image
uint8 [N,32,32,1], label, classes.txt beside them), building them the first time. The cache key
covers the source files (size, mtime) and the parameters, so a changed source is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil

import numpy as np

from tl_jax import paths
from tl_jax.data import preprocess
from tl_jax.data.sources import load_npz

SOURCE = "shared://data/gtsrb"
BLUR_SIGMA = 0.8
SPLITS = ("train", "test")


def preprocess_images(images: np.ndarray, sigma: float = BLUR_SIGMA, grey: bool = True,
                      equalize: bool = True) -> np.ndarray:
  """uint8 [N,H,W,3] -> uint8 [N,H,W,1 or 3]: grey, blur, equalise (seed 004's order)."""
  x = preprocess.to_grey(images) if grey else np.asarray(images)
  if sigma:
    x = preprocess.gaussian_blur(x, sigma)
  if equalize:
    x = preprocess.equalize_hist(x)
  return x


def cache_root() -> pathlib.Path:
  env = os.environ.get("TL_JAX_SCENARIO_CACHE")
  return pathlib.Path(env) if env else paths.PROJECT_ROOT / ".cache" / "scenarios"


def _key(src: pathlib.Path, sigma: float, grey: bool, equalize: bool) -> str:
  h = hashlib.sha256(f"v1|{sigma}|{grey}|{equalize}".encode())
  for s in SPLITS:
    st = (src / f"{s}.npz").stat()
    h.update(f"|{s}:{st.st_size}:{int(st.st_mtime)}".encode())
  return h.hexdigest()[:12]


def preprocessed_paths(source: str = SOURCE, sigma: float = BLUR_SIGMA, grey: bool = True,
                       equalize: bool = True) -> dict[str, str]:
  """Paths of the preprocessed train/test npz files; built (atomically) when missing.

  When the source is absent (no shared data) the raw source paths are returned unchanged, so a
  config still loads and the run fails with the loader's clear 'no such file' error.
  """
  try:
    src = paths.resolve(source)
  except Exception:  # shared root absent: ConfigError from paths.resolve
    return {s: f"{source}/{s}.npz" for s in SPLITS}
  if not all((src / f"{s}.npz").exists() for s in SPLITS):
    return {s: f"{source}/{s}.npz" for s in SPLITS}
  out = cache_root() / f"seed004_gtsrb_{_key(src, sigma, grey, equalize)}"
  if not all((out / f"{s}.npz").exists() for s in SPLITS):
    out.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
      ds = load_npz(src / f"{s}.npz", f"data.{s}")
      tmp = out / f"{s}.tmp.npz"
      np.savez(tmp, image=preprocess_images(ds.images, sigma, grey, equalize), label=ds.labels)
      os.replace(tmp, out / f"{s}.npz")
    shutil.copyfile(src / "classes.txt", out / "classes.txt")
  return {s: str(out / f"{s}.npz") for s in SPLITS}
