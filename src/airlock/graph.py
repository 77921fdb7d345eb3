"""The dependency graph: topological order, cycles and depths, in one place.

Services are numbered ``0..n-1`` and ``deps[i]`` lists the numbers ``i`` depends on. The plan
(names sorted), the engine (plan order) and the simulator all order services with
:func:`toposort`, so they agree; names are mapped to numbers by :func:`named`.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

__all__ = ["CycleError", "depths", "find_cycle", "named", "toposort"]


class CycleError(ValueError):
    """The graph has a cycle; ``cycle`` is one of them as ``[a, b, …, a]``."""

    def __init__(self, cycle: list[int]) -> None:
        super().__init__(f"dependency cycle through {cycle}")
        self.cycle = cycle


def _dependents(deps: Sequence[Sequence[int]]) -> list[list[int]]:
    dependents: list[list[int]] = [[] for _ in deps]
    for i, ds in enumerate(deps):
        for j in set(ds):
            dependents[j].append(i)
    return dependents


def toposort(deps: Sequence[Sequence[int]]) -> list[int]:
    """Dependencies first; among services that could go next, the lowest number first.

    Raises :class:`CycleError` naming one cycle when there is no such order.
    """
    indegree = [len(set(ds)) for ds in deps]
    dependents = _dependents(deps)
    ready = [i for i, k in enumerate(indegree) if k == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for d in dependents[i]:
            indegree[d] -= 1
            if indegree[d] == 0:
                heapq.heappush(ready, d)
    if len(order) < len(deps):
        cycle = find_cycle(deps)
        assert cycle is not None  # a leftover service always lies on or after a cycle
        raise CycleError(cycle)
    return order


def find_cycle(deps: Sequence[Sequence[int]]) -> list[int] | None:
    """One cycle as ``[a, b, …, a]`` (each depends on the next), or ``None``.

    Depth-first from the lowest number, so the same graph always gives the same cycle.
    """
    white, grey, black = 0, 1, 2
    colour = [white] * len(deps)
    for root in range(len(deps)):
        if colour[root] != white:
            continue
        stack = [(root, iter(deps[root]))]
        path = [root]
        colour[root] = grey
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour[child] == grey:
                    return [*path[path.index(child) :], child]
                if colour[child] == white:
                    colour[child] = grey
                    stack.append((child, iter(deps[child])))
                    path.append(child)
                    break
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return None


def depths(deps: Sequence[Sequence[int]]) -> list[int]:
    """Each service's dependency depth: 0 for none, else one more than its deepest dependency."""
    depth = [0] * len(deps)
    for i in toposort(deps):
        depth[i] = max((depth[j] + 1 for j in deps[i]), default=0)
    return depth


def named(
    graph: Mapping[str, Sequence[str]], order: Sequence[str] | None = None
) -> tuple[list[str], list[list[int]]]:
    """Number a ``{name: [dependency names]}`` graph: names in ``order`` (default sorted) and
    each one's dependencies as numbers. Dependencies on names outside the graph are dropped."""
    names = list(order) if order is not None else sorted(graph)
    index = {name: i for i, name in enumerate(names)}
    deps = [[index[d] for d in graph[name] if d in index] for name in names]
    return names, deps
