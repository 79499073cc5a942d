"""How much of the L2T meta-gradient is roundoff: float32 vs float64 at the same state.

The L2T look-ahead is ill-conditioned early in training (its CE rises from ~2.3 to ~16 at lr 0.1,
and a 1e-7 relative change of θ moves the float64 meta-gradient by tens of percent), so a float32
meta-gradient can be mostly roundoff; no published L2T code measures it. `MetaPrecisionProbe` is
an `on_epoch_end` hook of the engine (`kt.precision_probe_every = k` in a UFM-free L2T config):
at the first epoch end and then at the first epoch end after every k-th iteration (with one
iteration per epoch: after iterations 1, k, 2k, ...) it takes the run's state and the batch and key the next iteration will use
(the engine's own shuffle and step keys), and records to `meta_precision.jsonl`:

  * the meta-gradient in each setting - float32 at the run's matmul precision, float32 at XLA's
    'default' (TF32 on recent GPUs; skipped on CPU where both are the same), float64 - with its
    cosine similarity and relative error |g - g64| / |g64| against float64;
  * the look-ahead losses of each setting (L_wfm at θ_0..θ_{T-1}, CE at θ_T, CE(θ_{T+1}));
  * the float64 meta-gradient's sensitivity: |g64(θ_0 (1 + 1e-7 ξ)) - g64(θ_0)| / |g64(θ_0)|,
    ξ ~ N(0, 1) per entry - roundoff-sized changes of θ and what they do to the gradient;
  * the seconds each setting took (compiled; the first call's compile time excluded).

The probe reads the state and changes nothing: the run's numbers are those it would give
without it. Plot:
    python -m tl_jax.analysis.meta_precision --runs RUN_DIR [RUN_DIR ...] --out FIGURE.png
"""

from __future__ import annotations

import argparse
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.engine import fit as engine
from tl_jax.models import layers
from tl_jax.train import jsonl

PROBE_FILE = "meta_precision.jsonl"
SENSITIVITY = 1e-7


def _flat(tree: Any) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float64) for x in jax.tree.leaves(tree)])


def compare(g: Any, ref: Any) -> dict[str, float]:
  """Cosine similarity and relative error of gradient tree `g` against `ref` (float64)."""
  with jax.enable_x64(True):
    a, b = _flat(g), _flat(ref)
    nb = jnp.linalg.norm(b)
    return {"cosine": float(jnp.vdot(a, b) / jnp.maximum(jnp.linalg.norm(a) * nb, 1e-300)),
            "rel_error": float(jnp.linalg.norm(a - b) / jnp.maximum(nb, 1e-300)),
            "norm": float(jnp.linalg.norm(a))}


def _perturb(theta: Any, key: jax.Array, rel: float) -> Any:
  """θ (1 + rel ξ) in float64, ξ ~ N(0, 1) drawn in float32 (random bits outside x64: mixing
  them with x64 inside one jit does not lower)."""
  leaves, tdef = jax.tree.flatten(theta)
  keys = jax.random.split(key, len(leaves))
  noise = [jax.random.normal(k, x.shape, jnp.float32) for x, k in zip(leaves, keys)]
  with jax.enable_x64(True):
    return jax.tree.unflatten(tdef, [x.astype(jnp.float64) * (1.0 + rel * n.astype(jnp.float64))
                                     for x, n in zip(leaves, noise)])


class MetaPrecisionProbe:
  """`on_epoch_end` hook: (state, record) -> appends one probe row every `every` iterations.

  kt: the run's KnowledgeTransfer; source: the source variables (the engine's consts);
  images / labels / train_idx / seed / batch_size / drop_last: what the engine batches from, so
  the probe sees the batch of the run's next iteration.
  """

  def __init__(self, workdir: str | pathlib.Path, kt: Any, source: Any, images: Any,
               labels: Any, train_idx: np.ndarray, seed: int, batch_size: int,
               drop_last: bool, every: int):
    self.path = pathlib.Path(workdir) / PROBE_FILE
    self.kt, self.source, self.every = kt, source, int(every)
    self.images, self.labels = jnp.asarray(images), jnp.asarray(labels)
    self.train_idx = jnp.asarray(train_idx, jnp.int32)
    self.keys = {p: engine.seed_key(seed, p) for p in ("shuffle", "step")}
    self.batch_size, self.drop_last = int(batch_size), bool(drop_last)
    self.settings = [("float32", kt.config.matmul_precision)]
    if jax.default_backend() != "cpu" and kt.config.matmul_precision != "default":
      self.settings.append(("float32", "default"))
    self.settings.append(("float64", "highest"))
    self._fns: dict[Any, Any] = {}
    self._warm: set[Any] = set()
    self._last: int | None = None

  def batch_at(self, step: int) -> tuple[dict[str, jax.Array], jax.Array]:
    """The batch and key of the engine's iteration `step` when it is the first of its epoch."""
    n = self.train_idx.shape[0]
    order = jax.random.permutation(jax.random.fold_in(self.keys["shuffle"], step), n)
    pos, mask = engine.epoch_batches(order.astype(jnp.int32), self.batch_size, self.drop_last)
    rows = self.train_idx[pos[0]]
    batch = {"image": self.images[rows], "label": self.labels[rows], "mask": mask[0]}
    return batch, jax.random.fold_in(self.keys["step"], step)

  def _fn(self, dtype: str, precision: str, perturb: bool = False):
    if (dtype, precision, perturb) not in self._fns:
      kt = self.kt

      def fn(state, batch, key, source, pkey):
        # the iteration's own trace context (KnowledgeTransfer.iteration), so θ_0 is its θ_0
        with jax.default_matmul_precision(kt.config.matmul_precision), layers.second_order():
          ctx, k_drop, k_meta = kt.prepare(state, batch, key, source)
          theta0, v0, bs0, _ = kt.real_step(state, ctx, k_drop)
        if perturb:
          theta0 = _perturb(theta0, pkey, SENSITIVITY)
        loss, grad, aux = kt.meta_gradient(state.meta_params, theta0, v0, bs0, ctx, k_meta,
                                           dtype=dtype, precision=precision)
        return loss, grad, aux["lookahead"]
      self._fns[(dtype, precision, perturb)] = jax.jit(fn)
    return self._fns[(dtype, precision, perturb)]

  def probe(self, state: Any, batch: dict[str, jax.Array], key: jax.Array) -> dict[str, Any]:
    """One row: every setting's meta-gradient against float64, look-ahead losses, timings."""
    grads = {}
    row = {"step": int(state.step), "lr": float(self.kt.lr_schedule(state.step)), "settings": {}}
    pkey = jax.random.fold_in(key, 7)
    runs = [(d, p, False) for d, p in self.settings] + [("float64", "highest", True)]
    for dtype, precision, perturb in runs:
      fn = self._fn(dtype, precision, perturb)
      if (dtype, precision, perturb) not in self._warm:  # compile outside the timing
        jax.block_until_ready(fn(state, batch, key, self.source, pkey))
        self._warm.add((dtype, precision, perturb))
      t = time.time()
      loss, grad, look = jax.block_until_ready(fn(state, batch, key, self.source, pkey))
      name = "float64_perturbed" if perturb else f"{dtype}@{precision}"
      grads[name] = grad
      row["settings"][name] = {"meta_loss": float(loss), "lookahead": np.asarray(look).tolist(),
                               "seconds": time.time() - t}
    ref = grads["float64@highest"]
    for name, g in grads.items():
      row["settings"][name].update(compare(g, ref))
    row["sensitivity"] = row["settings"]["float64_perturbed"]["rel_error"]
    return row

  def __call__(self, state: Any, record: dict[str, Any]) -> None:
    step = int(state.step)  # iterations done = the index of the next one
    last, self._last = self._last, step
    if self.every <= 0 or (last is not None and step // self.every <= last // self.every):
      return
    if float(self.kt.lr_schedule(state.step)) == 0.0:
      return  # the look-ahead is the identity at lr 0: nothing to measure
    batch, key = self.batch_at(step)
    row = self.probe(state, batch, key)
    row["epoch"] = int(record["epoch"])
    jsonl.append_jsonl(self.path, row)


def read_probe(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
  """The probe rows of a run, last row per step (a resumed run may repeat one)."""
  path = pathlib.Path(workdir) / PROBE_FILE
  rows = {r["step"]: r for r in jsonl.read_jsonl(path)} if path.exists() else {}
  return [rows[s] for s in sorted(rows)]


def plot(runs: Sequence[str | pathlib.Path], out: str | pathlib.Path, title: str = "") -> Any:
  """Cosine and relative error of the float32 meta-gradient vs float64, the float64
  sensitivity and the look-ahead's final CE over iterations; one line per run."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for run in runs:
    rows = read_probe(run)
    if not rows:
      continue
    steps = [r["step"] for r in rows]
    label = pathlib.Path(run).name
    for name in rows[0]["settings"]:
      if name.startswith("float64"):
        continue
      axes[0].plot(steps, [r["settings"][name]["cosine"] for r in rows], "o-",
                   label=f"{label} {name}")
      axes[1].semilogy(steps, [r["settings"][name]["rel_error"] for r in rows], "o-",
                       label=f"{label} {name} vs float64")
    axes[1].semilogy(steps, [r["sensitivity"] for r in rows], "s--",
                     label=f"{label} float64, θ perturbed by {SENSITIVITY:g} (rel.)")
    for name in rows[0]["settings"]:
      if name == "float64_perturbed":
        continue
      axes[2].plot(steps, [r["settings"][name]["lookahead"][-1] for r in rows], "o-",
                   label=f"{label} {name}")
    axes[2].plot(steps, [r["settings"]["float64@highest"]["lookahead"][0] for r in rows], "k:",
                 label=f"{label} L_wfm(θ_0), float64")
  axes[0].set(title="cosine(float32 meta-grad, float64)", xlabel="iteration", ylim=(-0.05, 1.05))
  axes[1].set(title="relative error of the meta-gradient", xlabel="iteration")
  axes[2].set(title="look-ahead: CE(θ_{T+1}) (meta loss)", xlabel="iteration")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title or "L2T meta-gradient: float32 vs float64 at the same state")
  fig.tight_layout()
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.stem + ".tmp" + out.suffix)
  fig.savefig(tmp, dpi=110)
  tmp.replace(out)
  return fig


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--runs", nargs="+", required=True, help="run workdirs with meta_precision.jsonl")
  ap.add_argument("--out", required=True, help="PNG path")
  ap.add_argument("--title", default="")
  args = ap.parse_args(argv)
  missing = [r for r in args.runs if not (pathlib.Path(r) / PROBE_FILE).exists()]
  if missing:
    print(f"error: --runs: no {PROBE_FILE} in {', '.join(missing)}; allowed: run workdirs of "
          f"a config with kt.precision_probe_every > 0")
    return 2
  plot(args.runs, args.out, args.title)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
