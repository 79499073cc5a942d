"""Statistics checked against hand calculations (Holm, exact and asymptotic Mann-Whitney)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tl_jax.analysis import stats
from tl_jax.errors import ConfigError


def test_holm_hand_example():
  # sorted: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> cummax 0.06
  adj = stats.holm([0.01, 0.04, 0.03, 0.005])
  np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02], rtol=0, atol=1e-15)


def test_holm_caps_at_one_and_keeps_nan_out_of_family():
  adj = stats.holm([0.5, float("nan"), 0.2])
  # m = 2 (NaN excluded): sorted 0.2 -> 0.4, 0.5 -> min(1, 0.5) = 0.5
  np.testing.assert_allclose(adj[[0, 2]], [0.5, 0.4])
  assert math.isnan(adj[1])
  np.testing.assert_allclose(stats.holm([0.6, 0.7]), [1.0, 1.0])
  with pytest.raises(ConfigError):
    stats.holm([1.5])


def test_mean_std_uses_sample_std():
  ms = stats.mean_std([1.0, 2.0, 3.0, 4.0])
  assert ms.mean == 2.5 and ms.n == 4 and ms.ddof == 1
  assert ms.std == pytest.approx(math.sqrt(5.0 / 3.0))
  assert math.isnan(stats.mean_std([7.0]).std)
  assert stats.format_mean_std(52.534, 0.804) == "52.53 ± 0.80"
  assert stats.format_mean_std(52.534, 0.804, decimal_sep=",") == "52,53 ± 0,80"
  with pytest.raises(ConfigError):
    stats.mean_std([])


def test_mann_whitney_exact_hand_example():
  # complete separation with 3 vs 3: U_x = 0, P(U = 0) = 1 / C(6, 3) = 1/20, two-sided = 0.1
  r = stats.mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
  assert r.method == "exact" and r.alternative == "two-sided"
  assert r.statistic == 0.0
  assert r.pvalue == pytest.approx(0.1)
  assert r.rank_biserial == pytest.approx(-1.0)
  # one inversion: U_x = 1, P(U <= 1) = 2/20 -> two-sided 0.2; rank-biserial 2*1/9 - 1
  r = stats.mann_whitney([1.0, 2.0, 4.0], [3.0, 5.0, 6.0])
  assert r.statistic == 1.0 and r.pvalue == pytest.approx(0.2)
  assert r.rank_biserial == pytest.approx(2 / 9 - 1)


def test_mann_whitney_asymptotic_with_ties_matches_normal_approximation():
  x = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 5.0, 6.0, 7.0, 9.0])
  y = np.array([2.0, 3.0, 5.0, 6.0, 8.0, 8.0, 9.0, 10.0, 11.0, 12.0])
  r = stats.mann_whitney(x, y)
  assert r.method == "asymptotic"
  # hand: midranks, U_x = R_x - n(n+1)/2, tie-corrected variance, continuity 0.5
  from scipy.stats import rankdata, norm
  ranks = rankdata(np.concatenate([x, y]))
  n1, n2 = x.size, y.size
  u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
  n = n1 + n2
  _, t = np.unique(np.concatenate([x, y]), return_counts=True)
  var = n1 * n2 / 12 * ((n + 1) - (t ** 3 - t).sum() / (n * (n - 1)))
  z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(var)
  assert r.statistic == pytest.approx(u)
  assert r.pvalue == pytest.approx(2 * norm.sf(z), rel=1e-10)


def test_mann_whitney_auto_is_asymptotic_for_thirty_seeds_and_validates():
  rng = np.random.default_rng(0)
  r = stats.mann_whitney(rng.normal(size=30), rng.normal(size=30))
  assert r.method == "asymptotic" and r.n_x == 30 and r.n_y == 30
  r_exact = stats.mann_whitney(rng.normal(size=30), rng.normal(size=30), method="exact")
  assert r_exact.method == "exact" and 0 < r_exact.pvalue <= 1
  with pytest.raises(ConfigError):
    stats.mann_whitney([1.0], [2.0], alternative="bigger")
  with pytest.raises(ConfigError):
    stats.mann_whitney([1.0, float("nan")], [2.0])


def test_format_p():
  assert stats.format_p(0.0441) == "0.044"
  assert stats.format_p(0.0004) == "<0.001"
  assert stats.format_p(float("nan")) == "n/a"
