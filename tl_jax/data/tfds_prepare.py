"""Prepare a TFDS dataset offline, without TensorFlow, from an image folder (array_record).

TFDS can read array_record datasets without TensorFlow (`tfds.data_source`, what
`data.source = 'tfds'` uses), but its `Image` feature needs TensorFlow to *encode* images. This
writes the images as raw uint8 tensors instead (`tfds.features.Tensor(..., encoding='bytes')`),
which TFDS serialises with numpy alone, so a machine with no TensorFlow and no internet can
turn a folder of images into a TFDS dataset and train on it:

    python -m tl_jax.data.tfds_prepare --image_folder /data/flowers --name my_flowers \\
        --data_dir /data/tfds [--test_fraction 0.2]
    python -m tl_jax.main --config configs/quickstart.py ... --config.data.source=tfds \\
        --config.data.name=my_flowers --config.data.data_dir=/data/tfds \\
        --config.data.splits.train=train --config.data.splits.test=test --config.data.size='(64, 64)'

Layout: `<folder>/<class>/<image>` (a test split is carved with --test_fraction, the same
images every time) or `<folder>/<split>/<class>/<image>` (splits as given). Images keep their
own size (tl_jax resizes per record to `data.size`); every image mode is decoded to RGB by
`tl_jax.data.sources_images.decode_image` (16-bit scaled, alpha composited, ...).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from typing import Sequence

import numpy as np

from tl_jax.data.sources_images import IMAGE_SUFFIXES, decode_image
from tl_jax.errors import ConfigError


def _images(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def scan(root: str | pathlib.Path, test_fraction: float = 0.0, seed: int = 0
         ) -> tuple[tuple[str, ...], dict[str, list[tuple[pathlib.Path, int]]]]:
  """(class names, {split: [(path, label)]}) of an image folder (see the module docstring)."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ConfigError("--image_folder", str(root), hint="not a directory")
  split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name in ("train", "val",
                                                                                "test")]
  if split_dirs:
    classes = tuple(sorted({c.name for d in split_dirs for c in d.iterdir() if c.is_dir()}))
    splits = {d.name: [(p, classes.index(c.name)) for c in sorted(d.iterdir()) if c.is_dir()
                       for p in _images(c)] for d in split_dirs}
  else:
    classes = tuple(sorted(c.name for c in root.iterdir() if c.is_dir()))
    items = [(p, i) for i, c in enumerate(classes) for p in _images(root / c)]
    splits = {"train": items}
    if test_fraction > 0:
      rng = np.random.default_rng(seed)
      test_idx = set()
      for i in range(len(classes)):
        own = [k for k, (_, lab) in enumerate(items) if lab == i]
        n = int(round(test_fraction * len(own)))
        test_idx.update(rng.choice(own, size=n, replace=False).tolist() if n else [])
      splits = {"train": [x for k, x in enumerate(items) if k not in test_idx],
                "test": [x for k, x in enumerate(items) if k in test_idx]}
  if len(classes) < 2:
    raise ConfigError("--image_folder", str(root), "at least 2 class subfolders",
                      hint=f"found {list(classes)}")
  for name, items in splits.items():
    if not items:
      raise ConfigError("--image_folder", str(root), hint=f"split {name!r} has no images")
  return classes, splits


def prepare(image_folder: str | pathlib.Path, name: str, data_dir: str | pathlib.Path,
            test_fraction: float = 0.0, seed: int = 0) -> pathlib.Path:
  """Writes TFDS dataset `name` (version 1.0.0, array_record) under `data_dir`; returns its
  folder. `tfds.data_source(name, split=..., data_dir=data_dir)` reads it back TF-free."""
  import tensorflow_datasets as tfds
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise ConfigError("--name", name, "a snake_case name (a-z, 0-9, _)")
  classes, splits = scan(image_folder, test_fraction, seed)

  def _info(self):
    return self.dataset_info_from_configs(
        description=f"Prepared by tl_jax.data.tfds_prepare from {image_folder}",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                          encoding="bytes"),
            "label": tfds.features.ClassLabel(names=list(classes))}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(s) for s in splits}

  def _generate_examples(self, split):
    for i, (path, label) in enumerate(splits[split]):
      yield i, {"image": decode_image(path.read_bytes(), what=str(path)), "label": label}

  camel = "".join(part.capitalize() for part in name.split("_"))
  cls = type(camel, (tfds.core.GeneratorBasedBuilder,),
             {"VERSION": tfds.core.Version("1.0.0"), "__module__": __name__,
              "_info": _info, "_split_generators": _split_generators,
              "_generate_examples": _generate_examples}, skip_registration=True)
  builder = cls(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return pathlib.Path(builder.data_dir)


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--image_folder", required=True)
  ap.add_argument("--name", required=True)
  ap.add_argument("--data_dir", required=True)
  ap.add_argument("--test_fraction", type=float, default=0.0)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  try:
    out = prepare(args.image_folder, args.name, args.data_dir, args.test_fraction, args.seed)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"prepared {out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
