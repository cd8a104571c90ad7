"""The Pareto front of accuracy vs latency: the bundles worth choosing between.

A bundle is on the front when no other bundle is at least as fast *and* at least as accurate
while being strictly better in one of the two; every bundle off the front has a better choice.
"""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float] | None]) -> list[bool]:
    """For each (latency, accuracy) point, whether it is on the front (lower latency and higher
    accuracy are better). None (no accuracy measured) is never on the front; equal points are
    both kept, since neither is better."""
    flags = []
    for i, p in enumerate(points):
        if p is None:
            flags.append(False)
            continue
        dominated = any(
            q is not None and j != i and q[0] <= p[0] and q[1] >= p[1] and q != p
            for j, q in enumerate(points))
        flags.append(not dominated)
    return flags


def front_order(points: Sequence[tuple[float, float] | None]) -> list[int]:
    """Indices of the front sorted by latency, to draw it as a line from fast to accurate."""
    flags = pareto_front(points)
    return sorted((i for i, f in enumerate(flags) if f), key=lambda i: points[i])
