"""A long series cut into a bounded number of buckets (pipeline.training.series): bounded, faithful, stable as it
grows."""

from __future__ import annotations

import math
import random

import pytest

from pipeline.training.series import Bucket, bucket_width, buckets


def _noisy_loss(count: int, seed: int = 0) -> list[tuple[int, float]]:
    """A loss-like series: a falling trend with noise, steps from 1."""
    rng = random.Random(seed)
    return [(step, 1.0 / math.sqrt(step) + rng.uniform(-0.2, 0.2)) for step in range(1, count + 1)]


def test_a_short_series_is_kept_point_for_point() -> None:
    points = _noisy_loss(50)
    cut = buckets(points, 100, exact=10)
    assert [b.low for b in cut] == points and all(b.count == 1 and b.extremes() == [b.low] for b in cut)


@pytest.mark.parametrize("count", [101, 999, 10_000, 100_000])
def test_any_length_gives_at_most_max_buckets_and_the_latest_points_exact(count: int) -> None:
    points = _noisy_loss(count)
    cut = buckets(points, 100, exact=20)
    assert len(cut) <= 100
    assert [b.low for b in cut[-20:]] == points[-20:]  # the latest points as reported
    assert sum(b.count for b in cut) == count  # every point in exactly one bucket, in order
    assert [b.first_step for b in cut] == sorted(b.first_step for b in cut)
    assert cut[0].first_step == 1 and cut[-1].last_step == count


def test_the_extremes_keep_the_series_range_and_the_means_its_trend() -> None:
    points = _noisy_loss(10_000)
    cut = buckets(points, 100, exact=20)
    drawn = [p for b in cut for p in b.extremes()]
    assert min(v for _, v in drawn) == min(v for _, v in points)  # the noise band is still drawn in full
    assert max(v for _, v in drawn) == max(v for _, v in points)
    assert all(b.low[1] <= b.mean <= b.high[1] for b in cut)
    first, last = cut[0], cut[-30]
    assert first.mean > last.mean  # the falling trend
    assert first.first_step <= first.middle[0] <= first.last_step


def test_a_finished_bucket_stays_the_same_as_the_series_grows() -> None:
    """Polled every second, the chart must not shimmer: old buckets change only when their width doubles."""
    points = _noisy_loss(5000)
    before, after = buckets(points[:4000], 100, exact=20), buckets(points, 100, exact=20)
    assert bucket_width(3980, 80) == bucket_width(4980, 80) == 64
    full = [b for b in before[:-21] if b.count == 64]
    assert full and after[:len(full)] == full


def test_a_nan_loss_does_not_hide_the_bucket_range() -> None:
    points = [(1, 0.5), (2, math.nan), (3, 0.9), (4, 0.1)]
    bucket = buckets(points, 1)[0]
    assert (bucket.low, bucket.high, bucket.mean) == ((4, 0.1), (3, 0.9), pytest.approx(0.5))
    assert bucket.extremes() == [(3, 0.9), (4, 0.1)]  # in step order
    only_nan = buckets([(1, math.nan), (2, math.nan)], 1)[0]
    assert math.isnan(only_nan.mean) and only_nan.count == 2


def test_width_and_bad_arguments() -> None:
    assert [bucket_width(n, 10) for n in (0, 10, 11, 20, 21, 1000)] == [1, 1, 2, 2, 4, 128]
    with pytest.raises(ValueError, match="max_buckets must be at least 1, not 0"):
        bucket_width(5, 0)
    with pytest.raises(ValueError, match=r"exact must be between 0 and max_buckets - 1 \(9\), not 10"):
        buckets(_noisy_loss(5), 10, exact=10)
    assert buckets([], 10) == []
    assert isinstance(buckets(_noisy_loss(3), 10)[0], Bucket)
