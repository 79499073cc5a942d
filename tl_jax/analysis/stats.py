"""Statistics for n-seed sweeps: mean ± std, two-sided Mann-Whitney U, Holm correction.

Why these: the thesis (sec. 5.5) compares n = 30 repetitions per cell with Mann-Whitney U tests
(no normality assumption). Testing one comparison at several training-set sizes is a family of
tests, so we also report Holm-adjusted p-values (step-down, controls the family-wise error rate
without assuming independence). scipy has no Holm; `holm` below is small and tested by hand.

Conventions (stated in every report): std uses ddof=1 (sample std); tests are two-sided; the
Mann-Whitney method is chosen like scipy's 'auto' (exact when a sample has <= 8 values and there
are no ties, asymptotic with continuity correction otherwise) but resolved here so the method
actually used is recorded.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats as sps

from tl_jax.errors import ConfigError, check_choice

DDOF = 1
ALTERNATIVES = ("two-sided", "less", "greater")
MW_METHODS = ("auto", "exact", "asymptotic")
EXACT_MAX_N = 8  # scipy's documented 'auto' threshold


@dataclasses.dataclass(frozen=True)
class MeanStd:
  """Mean and sample std (ddof=1) of one cell; std is NaN when n < 2."""
  mean: float
  std: float
  n: int
  ddof: int = DDOF

  def format(self, decimals: int = 2, decimal_sep: str = ".") -> str:
    return format_mean_std(self.mean, self.std, decimals, decimal_sep)


@dataclasses.dataclass(frozen=True)
class MannWhitneyResult:
  """One Mann-Whitney U test of x vs y. `statistic` is U for x (scipy's convention)."""
  statistic: float
  pvalue: float
  method: str  # 'exact' or 'asymptotic' (resolved, never 'auto')
  alternative: str
  n_x: int
  n_y: int
  rank_biserial: float  # 2*U_x/(n_x*n_y) - 1 in [-1, 1]; > 0 means x tends to be larger


def _as_1d(values: Sequence[float], field: str) -> np.ndarray:
  arr = np.asarray(values, dtype=np.float64).reshape(-1)
  if arr.size and not np.all(np.isfinite(arr)):
    raise ConfigError(field, values, "finite numbers", hint="NaN/inf in the sample")
  return arr


def mean_std(values: Sequence[float], ddof: int = DDOF) -> MeanStd:
  """Mean and std with `ddof` (default 1, the sample std the thesis tables use)."""
  arr = _as_1d(values, "values")
  if arr.size == 0:
    raise ConfigError("values", list(values), "a non-empty sample")
  std = float(np.std(arr, ddof=ddof)) if arr.size > ddof else float("nan")
  return MeanStd(float(np.mean(arr)), std, int(arr.size), ddof)


def format_mean_std(mean: float, std: float, decimals: int = 2, decimal_sep: str = ".") -> str:
  """'52.53 ± 0.80' (or '52,53 ± 0,80' with decimal_sep=',' as in the thesis)."""
  s = f"{mean:.{decimals}f} ± " + ("n/a" if math.isnan(std) else f"{std:.{decimals}f}")
  return s.replace(".", decimal_sep) if decimal_sep != "." else s


def format_p(p: float, digits: int = 3) -> str:
  """p-value for tables: '0.004', '<0.001', 'n/a' for NaN."""
  if p is None or (isinstance(p, float) and math.isnan(p)):
    return "n/a"
  floor = 10.0 ** (-digits)
  return f"<{floor:.{digits}f}" if p < floor else f"{p:.{digits}f}"


def resolve_mw_method(x: np.ndarray, y: np.ndarray, method: str = "auto") -> str:
  """The method scipy's 'auto' would pick, made explicit so reports can state it."""
  check_choice("stats.method", method, MW_METHODS)
  if method != "auto":
    return method
  pooled = np.concatenate([x, y])
  has_ties = np.unique(pooled).size < pooled.size
  if min(x.size, y.size) <= EXACT_MAX_N and not has_ties:
    return "exact"
  return "asymptotic"


def mann_whitney(x: Sequence[float], y: Sequence[float], alternative: str = "two-sided",
                 method: str = "auto") -> MannWhitneyResult:
  """Mann-Whitney U test (scipy.stats.mannwhitneyu) plus rank-biserial effect size."""
  check_choice("stats.alternative", alternative, ALTERNATIVES)
  xa, ya = _as_1d(x, "x"), _as_1d(y, "y")
  if xa.size == 0 or ya.size == 0:
    raise ConfigError("x/y", (xa.size, ya.size), "two non-empty samples")
  used = resolve_mw_method(xa, ya, method)
  res = sps.mannwhitneyu(xa, ya, alternative=alternative, method=used, use_continuity=True)
  u = float(res.statistic)
  rbc = 2.0 * u / (xa.size * ya.size) - 1.0
  return MannWhitneyResult(u, float(res.pvalue), used, alternative, int(xa.size), int(ya.size),
                           rbc)


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm step-down adjusted p-values, same order as the input; NaNs stay NaN and are not counted.

  Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
  Reject H_(i) at level alpha iff adj_(i) <= alpha.
  """
  p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
  out = np.full(p.shape, np.nan)
  valid = np.flatnonzero(~np.isnan(p))
  if valid.size == 0:
    return out
  pv = p[valid]
  if np.any((pv < 0) | (pv > 1)):
    raise ConfigError("pvalues", list(pvalues), "values in [0, 1]")
  m = pv.size
  order = np.argsort(pv, kind="stable")
  scaled = np.minimum(1.0, (m - np.arange(m)) * pv[order])
  adj_sorted = np.maximum.accumulate(scaled)
  adj = np.empty(m)
  adj[order] = adj_sorted
  out[valid] = adj
  return out
