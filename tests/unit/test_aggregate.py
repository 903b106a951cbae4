"""Aggregation functions (jobs.aggregate): pure, typed, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.aggregate import AGGREGATORS, get_aggregator, median, trimmed_mean, weighted_mean


def _updates(k=5, shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(k)], list(rng.integers(1, 1000, k).astype(float))


def test_weighted_mean_is_the_sample_weighted_mean():
    values, weights = _updates()
    expected = np.tensordot(np.array(weights) / sum(weights), np.stack(values), axes=1)
    np.testing.assert_allclose(weighted_mean(values, weights), expected, rtol=1e-13)
    assert weighted_mean(values, weights).dtype == np.float64


def test_weighted_mean_sums_in_the_given_order_bit_for_bit():
    values, weights = _updates(k=16, shape=(50,))
    first = weighted_mean(values, weights)
    again = weighted_mean([v.copy() for v in values], list(weights))
    assert first.tobytes() == again.tobytes()  # a fixed order gives the same bits every time
    acc = np.zeros(50)
    total = sum(weights)
    for v, w in zip(values, weights):
        acc += (w / total) * v
    assert first.tobytes() == acc.tobytes()  # and that order is the order given


def test_weights_scale_invariance_and_zero_weight():
    values, weights = _updates()
    np.testing.assert_allclose(weighted_mean(values, weights), weighted_mean(values, [3 * w for w in weights]),
                               rtol=1e-13)
    outlier = values + [np.full((3, 4), 1e9)]
    np.testing.assert_allclose(weighted_mean(outlier, weights + [0.0]), weighted_mean(values, weights), rtol=1e-13)


def test_median_and_trimmed_mean_resist_an_outlier():
    rng = np.random.default_rng(1)
    honest = [1.0 + 0.01 * rng.standard_normal(6) for _ in range(9)]
    values = honest + [np.full(6, 1e6)]
    weights = [1.0] * 10
    assert np.all(np.abs(median(values, weights) - 1.0) < 0.05)
    assert np.all(np.abs(trimmed_mean(values, weights, trim=0.1) - 1.0) < 0.05)
    assert np.all(weighted_mean(values, weights) > 1e4)


def test_median_and_trimmed_mean_do_not_depend_on_order():
    values, weights = _updates(k=7)
    order = [3, 0, 6, 2, 5, 1, 4]
    shuffled = [values[i] for i in order]
    sw = [weights[i] for i in order]
    np.testing.assert_array_equal(median(values, weights), median(shuffled, sw))
    np.testing.assert_allclose(trimmed_mean(values, weights), trimmed_mean(shuffled, sw), rtol=1e-15)


def test_single_update_is_returned():
    v = np.arange(6.0).reshape(2, 3)
    for fn in AGGREGATORS.values():
        np.testing.assert_allclose(fn([v], [5.0]), v)


@pytest.mark.parametrize(
    "values,weights,message",
    [
        ([], [], "zero updates"),
        ([np.ones(2)], [1.0, 2.0], "1 updates but 2 weights"),
        ([np.ones(2), np.ones(3)], [1.0, 1.0], "different shapes"),
        ([np.ones(2), np.ones(2)], [0.0, 0.0], "not all zero"),
        ([np.ones(2), np.ones(2)], [-1.0, 2.0], "non-negative"),
        ([np.ones(2), np.ones(2)], [np.nan, 2.0], "finite"),
    ],
)
def test_invalid_inputs_are_refused(values, weights, message):
    for fn in AGGREGATORS.values():
        with pytest.raises(ValueError, match=message):
            fn(values, weights)


def test_trim_share_is_validated():
    values, weights = _updates()
    with pytest.raises(ValueError, match="trim"):
        trimmed_mean(values, weights, trim=0.5)


def test_get_aggregator_names_the_choices():
    assert get_aggregator("median") is median
    with pytest.raises(ValueError, match=r"aggregate='krum'.*\['mean', 'median', 'trimmed_mean'\]"):
        get_aggregator("krum")
