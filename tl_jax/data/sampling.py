"""Seeded index selection over labels: per-class subsets, splits, imbalance, merging, balancing.

All functions return integer index arrays (or new labels) so they compose with
`ArrayDataset.subset`, and take `seed` as an int or a `np.random.Generator` so that a run is
reproducible from its config alone.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tl_jax.errors import ConfigError, check_choice


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
  if isinstance(seed, np.random.Generator):
    return seed
  return np.random.default_rng(seed)


def _labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
    raise ConfigError("labels", f"{labels.dtype}{list(labels.shape)}", "a 1-D integer array")
  return labels


def _classes(labels: np.ndarray, classes) -> list[int]:
  return sorted(np.unique(labels).tolist()) if classes is None else [int(c) for c in classes]


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int, cls: int, field: str) -> np.ndarray:
  if n < 0:
    raise ConfigError(field, n, "a non-negative count")
  if n > pool.size:
    raise ConfigError(field, n, f"at most {pool.size}", hint=f"class {cls} has only {pool.size} "
                      "examples")
  return rng.choice(pool, size=n, replace=False)


def sample_per_class(labels, n: int, seed: int | np.random.Generator,
                     classes: Sequence[int] | None = None) -> np.ndarray:
  """Exactly `n` distinct indices of each class (all classes present, or `classes`), sorted."""
  labels, rng = _labels(labels), _rng(seed)
  out = [_draw(rng, np.flatnonzero(labels == c), n, c, "n_per_class") for c in _classes(labels,
                                                                                        classes)]
  return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def train_val_split(labels, n_train: int, n_val: int, seed: int | np.random.Generator,
                    classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Disjoint per-class samples: `n_train` and `n_val` indices of each class (sorted)."""
  labels, rng = _labels(labels), _rng(seed)
  tr, va = [], []
  for c in _classes(labels, classes):
    pool = np.flatnonzero(labels == c)
    if n_train < 0 or n_val < 0:
      raise ConfigError("n_train/n_val", (n_train, n_val), "non-negative counts")
    both = _draw(rng, pool, n_train + n_val, c, "n_train+n_val")
    tr.append(both[:n_train])
    va.append(both[n_train:])
  return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def imbalanced(labels, counts, seed: int | np.random.Generator) -> np.ndarray:
  """A class-imbalanced subset.

  `counts` is either {class: n} (classes absent from the dict are kept whole) or a tuple
  `(minority_classes, n_minority, n_majority)` giving every class one of two sizes.
  """
  labels, rng = _labels(labels), _rng(seed)
  present = _classes(labels, None)
  if isinstance(counts, Mapping):
    wanted = {int(c): int(n) for c, n in counts.items()}
    unknown = sorted(set(wanted) - set(present))
    if unknown:
      raise ConfigError("counts", unknown, present, hint="classes not present in labels")
  elif isinstance(counts, (tuple, list)) and len(counts) == 3:
    minority, n_min, n_maj = counts
    minority = {int(c) for c in minority}
    wanted = {c: int(n_min if c in minority else n_maj) for c in present}
  else:
    raise ConfigError("counts", counts, "{class: n} or (minority_classes, n_minority, n_majority)")
  out = []
  for c in present:
    pool = np.flatnonzero(labels == c)
    out.append(_draw(rng, pool, wanted[c], c, f"counts[{c}]") if c in wanted else pool)
  return np.sort(np.concatenate(out))


def merge_classes(labels, mapping: Mapping[str, Sequence], class_names: Sequence[str] | None = None
                  ) -> tuple[np.ndarray, tuple[str, ...]]:
  """Merges groups of classes into one each (seed 000 folds rare lesion types into 'other').

  `mapping` is {new_name: [old ids or old names]}. Unmentioned classes keep their name; the result
  is relabelled 0..k-1, each merged class taking the place of its lowest old id.
  Returns (new_labels int32, new_class_names).
  """
  labels = _labels(labels)
  n_old = int(labels.max()) + 1 if class_names is None else len(class_names)
  names = list(class_names) if class_names is not None else [str(i) for i in range(n_old)]
  target = list(range(n_old))     # old id -> representative old id
  group_name = {}
  seen = set()
  for new_name, members in mapping.items():
    ids = []
    for m in members:
      if isinstance(m, str) and not m.lstrip("-").isdigit():
        if m not in names:
          raise ConfigError(f"merge_classes[{new_name!r}]", m, names)
        ids.append(names.index(m))
      else:
        ids.append(int(m))
    bad = [i for i in ids if not 0 <= i < n_old]
    if bad or not ids:
      raise ConfigError(f"merge_classes[{new_name!r}]", members, f"ids in [0, {n_old - 1}]")
    dup = seen.intersection(ids)
    if dup:
      raise ConfigError(f"merge_classes[{new_name!r}]", sorted(dup), hint="class in two groups")
    seen.update(ids)
    rep = min(ids)
    for i in ids:
      target[i] = rep
    group_name[rep] = str(new_name)
  reps = sorted(set(target))
  new_id = {r: k for k, r in enumerate(reps)}
  lut = np.array([new_id[target[i]] for i in range(n_old)], np.int32)
  new_names = tuple(group_name.get(r, names[r]) for r in reps)
  return lut[labels], new_names


def balance(labels, mode: str = "down", seed: int | np.random.Generator = 0) -> np.ndarray:
  """Indices giving every present class the same count.

  'down': each class subsampled (no replacement) to the smallest class size.
  'up': each class keeps all its rows and is topped up to the largest size by sampling its rows
  with replacement (seed 000 then relies on augmentation to vary the copies).
  """
  labels, rng = _labels(labels), _rng(seed)
  check_choice("balance.mode", mode, ("down", "up"))
  present = _classes(labels, None)
  pools = [np.flatnonzero(labels == c) for c in present]
  sizes = [p.size for p in pools]
  out = []
  if mode == "down":
    n = min(sizes)
    out = [rng.choice(p, size=n, replace=False) for p in pools]
  else:
    n = max(sizes)
    out = [np.concatenate([p, rng.choice(p, size=n - p.size, replace=True)]) for p in pools]
  return np.sort(np.concatenate(out))
