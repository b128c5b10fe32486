"""csae_bench.stats: the stratified bootstrap CI of a weighted mean."""

import numpy as np

from csae_bench.stats import weighted_mean_ci


def _ci(values, strata, seed=0):
    values = np.asarray(values, dtype=float)
    return weighted_mean_ci(values, np.ones_like(values), np.asarray(strata), 500, 0.95,
                            np.random.default_rng(seed))


def test_one_item_per_stratum_still_gets_a_ci_of_nonzero_width():
    point, lo, hi = _ci([0.0, 1.0, 2.0, 3.0], [0, 1, 2, 3])
    assert point == 1.5 and lo < point < hi


def test_a_single_item_has_no_ci_and_nothing_has_no_mean():
    assert _ci([0.7], [0])[1:] == (None, None)
    assert weighted_mean_ci(np.array([]), np.array([]), np.array([]), 10, 0.95,
                            np.random.default_rng(0)) == (None, None, None)


def test_ci_covers_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    small = rng.normal(0.2, 1.0, 20)
    big = rng.normal(0.2, 1.0, 2000)
    _, lo_s, hi_s = _ci(small, np.zeros(20, int))
    _, lo_b, hi_b = _ci(big, np.zeros(2000, int))
    assert lo_b < 0.2 < hi_b and (hi_b - lo_b) < (hi_s - lo_s) / 3
