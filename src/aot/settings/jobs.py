"""The shape of a run's cluster jobs: wall times from the work, and sample sets packed into
submissions whose summed wall time fits the partition's limit. Pure functions of numbers and names."""

from __future__ import annotations

import math


def minutes_for(work_s: float, *, safety: float, startup_s: float, max_minutes: int, margin_s: float = 0) -> int:
    """Requested wall time in minutes for `work_s` seconds of work: `safety` times (the per-job
    start-up plus the work), plus `margin_s` for jobs that stop that long before their limit to save
    their state, at most the cluster's longest job (`max_minutes`)."""
    total = safety * (startup_s + work_s) + margin_s
    return max(1, min(max_minutes, math.ceil(total / 60)))


def pack_groups(minutes: dict[str, int], max_minutes: int, most: int) -> list[list[str]]:
    """Names packed into groups of at most `most` members whose minutes add up to at most
    `max_minutes` (first fit, longest first, ties by name): the same input always gives the same
    groups, and a member longer than the limit alone gets a group of its own."""
    groups: list[list] = []  # [total minutes, [names]]
    for name, m in sorted(minutes.items(), key=lambda item: (-item[1], item[0])):
        for g in groups:
            if len(g[1]) < most and g[0] + m <= max_minutes:
                g[0] += m
                g[1].append(name)
                break
        else:
            groups.append([m, [name]])
    return [sorted(names) for _, names in groups]
