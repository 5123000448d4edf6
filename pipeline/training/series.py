"""A long (step, value) series cut into a bounded number of buckets, for charts redrawn while a run goes on.

A live chart is sent and redrawn on every poll: drawn from every point, a 5000-step run sends 10 000 points each
second and the browser tab freezes (issue 33). Summarised here, its cost stops growing with the run:

- the older points fall into buckets of consecutive points whose width is a power of two counted from the first
  point, so a full bucket summarises the same points on every poll (until the width doubles) and the chart does
  not shimmer as the run grows;
- each bucket keeps its mean and its lowest and highest point: a line through the extremes covers the same
  vertical range as the full noisy series would at that place (the noise stays visible), a line through the means
  draws its trend;
- the latest ``exact`` points stay one bucket each, as they were reported: that is where the user looks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Point = tuple[int, float]  # (step, value)


@dataclass(frozen=True)
class Bucket:
    """Consecutive points of a series, summarised."""

    first_step: int
    last_step: int
    mean: float  # of the finite values; NaN when there are none
    low: Point  # the lowest point, at its own step
    high: Point  # the highest point, at its own step
    count: int

    @property
    def middle(self) -> Point:
        """The mean at the bucket's middle step: one point of the trend line."""
        return (self.first_step + self.last_step) // 2, self.mean

    def extremes(self) -> list[Point]:
        """The lowest and highest point in the order they were reported (one when they are the same point)."""
        if self.low == self.high:
            return [self.low]
        return sorted((self.low, self.high), key=lambda point: point[0])


def bucket_width(count: int, max_buckets: int) -> int:
    """The smallest power of two that cuts ``count`` points into at most ``max_buckets`` buckets."""
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be at least 1, not {max_buckets}")
    width = 1
    while -(-count // width) > max_buckets:  # ceil(count / width)
        width *= 2
    return width


def buckets(points: Sequence[Point], max_buckets: int, *, exact: int = 0) -> list[Bucket]:
    """``points`` as at most ``max_buckets`` buckets, the last ``exact`` points one bucket each.

    Two series of the same length (e.g. the raw and the smoothed loss) get the same buckets, step for step.
    """
    if not 0 <= exact < max_buckets:
        raise ValueError(f"exact must be between 0 and max_buckets - 1 ({max_buckets - 1}), not {exact}")
    if len(points) <= max_buckets:
        return [_bucket(points[i:i + 1]) for i in range(len(points))]
    head_count = len(points) - exact
    width = bucket_width(head_count, max_buckets - exact)
    head = [_bucket(points[start:min(start + width, head_count)]) for start in range(0, head_count, width)]
    return head + [_bucket(points[i:i + 1]) for i in range(head_count, len(points))]


def _bucket(points: Sequence[Point]) -> Bucket:
    # A NaN (a diverged loss) compares false with everything: it would make min and max depend on where it lies.
    finite = [p for p in points if math.isfinite(p[1])] or list(points[:1])
    values = [v for _, v in finite if math.isfinite(v)]
    return Bucket(first_step=points[0][0], last_step=points[-1][0],
                  mean=math.fsum(values) / len(values) if values else math.nan,
                  low=min(finite, key=lambda p: p[1]), high=max(finite, key=lambda p: p[1]), count=len(points))
