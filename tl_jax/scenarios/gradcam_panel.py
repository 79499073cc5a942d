"""Grad-CAM panel of several trained runs on the same test images (seed 000, section 8).

Rebuilds each run's model from its workdir (model.json + model_variables.msgpack written by
tl_jax.experiment), with EfficientNet-Lite0's forward-pass cut removed (frozen_blocks=0: same
parameters and eval outputs, but gradients reach the explained map), and draws one row per
image, one column per run, with tl_jax.analysis.gradcam.gradcam_panel.

    python -m tl_jax.scenarios.gradcam_panel --config configs/seed000_catsdogs_five_scenarios.py \
        --workdir workdirs/seed000_catsdogs --out results/seed000/gradcam_panel.png
"""

from __future__ import annotations

import argparse
import json
import pathlib
import runpy

import ml_collections
import numpy as np

from tl_jax import experiment
from tl_jax.analysis import gradcam
from tl_jax.data import augment
from tl_jax.data.sources import load_dataset
from tl_jax.transfer import init as tinit


def load_run(run_dir: str | pathlib.Path):
  """(model, variables, class_names) of a finished tl_jax run."""
  run_dir = pathlib.Path(run_dir)
  meta = json.loads((run_dir / "model.json").read_text())
  mcfg = ml_collections.ConfigDict({"model": meta["model"]})
  if "frozen_blocks" in mcfg.model.kwargs:
    mcfg.model.kwargs.frozen_blocks = 0
  model, _ = experiment.build_model(mcfg, int(meta["num_classes"]))
  variables = tinit.load_variables(run_dir)
  return model, variables, meta.get("class_names")


def pick_images(images: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
  """n test images, classes interleaved, first ones of each class (deterministic)."""
  per = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  idx = [p[i] for i in range(n) for p in per if i < len(p)][:n]
  return np.asarray(idx)


def make_panel(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, out: str,
               feature: str, n: int = 6, methods=None) -> list[str]:
  wd = pathlib.Path(workdir)
  spec = experiment.data_spec(config)
  splits = load_dataset(spec)
  test = splits.test
  idx = pick_images(test.images, test.labels, n)
  images = test.images[idx]
  pre = augment.make_preprocess(config.input)
  order = methods or tuple(config.compare.order)
  entries = []
  for m in order:
    runs = sorted(wd.glob(f"runs/{m}/n*/seed*"))
    if not runs:
      continue
    model, variables, names = load_run(runs[0])
    entries.append(gradcam.GradCamEntry(m, model, variables, feature, pre, names))
  gradcam.gradcam_panel(entries, images, out, labels=test.labels[idx],
                        class_names=test.class_names)
  return [e.name for e in entries]


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", required=True)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--feature", default="stage3",
                  help="feature map to explain (EfficientNet-Lite0: stage0..stage8)")
  ap.add_argument("--n", type=int, default=6)
  a = ap.parse_args(argv)
  config = runpy.run_path(a.config)["get_config"]()
  names = make_panel(config, a.workdir, a.out, a.feature, a.n)
  print(f"wrote {a.out}: {names}")


if __name__ == "__main__":
  main()
