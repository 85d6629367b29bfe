"""Maximum-cardinality bipartite matching for large, sparse, geometric graphs.

Written for the BSDS-style edge metric (``edge_matching.py``): ~10k pixels a side and
~10 candidate partners each. scipy's ``maximum_bipartite_matching`` is exact but its
depth-first search marks no vertex as visited when a search fails, so on such graphs
it walks the same alternating paths over and over (a 512x512 map did not finish in
minutes). Here a nearest-first greedy matching does most of the work, then whole
breadth-first searches, vectorised with numpy, augment the rest; the result is
maximum because the loop only ends when no augmenting path is left (Berge).
"""

from __future__ import annotations

import numpy as np

__all__ = ["maximum_matching"]


def maximum_matching(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int,
                     priority: np.ndarray | None = None) -> np.ndarray:
    """A maximum one-to-one matching of the bipartite graph with edges ``(rows[k], cols[k])``.

    ``priority`` (lower first, e.g. distances) orders the greedy seed; any order gives
    a maximum matching, a good one just leaves less to augment. Returns, for each row,
    its matched column or -1.
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    if priority is None:
        priority = np.zeros(len(rows))
    row_match, col_match = _greedy_matching(rows, cols, np.asarray(priority), n_rows, n_cols)
    # Search from the side with fewer unmatched vertices: each search starts from all of them.
    if np.count_nonzero(col_match < 0) < np.count_nonzero(row_match < 0):
        _augment_to_maximum(cols, rows, col_match, row_match)
    else:
        _augment_to_maximum(rows, cols, row_match, col_match)
    return row_match


def _greedy_matching(rows: np.ndarray, cols: np.ndarray, priority: np.ndarray,
                     n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """A maximal matching by rounds of proposals: every unmatched row proposes its
    first remaining edge in priority order, every column accepts its first proposal."""
    order = np.argsort(priority, kind="stable")
    rows, cols = rows[order], cols[order]
    row_match = np.full(n_rows, -1, dtype=np.int64)
    col_match = np.full(n_cols, -1, dtype=np.int64)
    while len(rows):
        proposals = _first_per_vertex(rows, np.arange(len(rows)), n_rows)
        chosen = proposals[_first_per_vertex(cols[proposals], proposals, n_cols)]
        row_match[rows[chosen]] = cols[chosen]
        col_match[cols[chosen]] = rows[chosen]
        still_free = (row_match[rows] < 0) & (col_match[cols] < 0)
        rows, cols = rows[still_free], cols[still_free]
    return row_match, col_match


def _first_per_vertex(vertices: np.ndarray, ranks: np.ndarray, n_vertices: int) -> np.ndarray:
    """Positions in ``vertices`` of each vertex's lowest-ranked entry (without a sort)."""
    lowest = np.full(n_vertices, np.iinfo(np.int64).max)
    np.minimum.at(lowest, vertices, ranks)
    return np.flatnonzero(lowest[vertices] == ranks)


def _augment_to_maximum(rows: np.ndarray, cols: np.ndarray, row_match: np.ndarray, col_match: np.ndarray) -> None:
    """Augment ``row_match``/``col_match`` in place until no augmenting path is left.

    Each round grows one breadth-first alternating forest from all unmatched rows at
    once (a column is claimed by the first tree that reaches it) and flips, in every
    tree that reached an unmatched column, the path to one such column. Trees are
    disjoint, so all those flips are compatible; a round that reaches no unmatched
    column proves the matching maximum.
    """
    if not (row_match < 0).any() or not (col_match < 0).any():
        return
    neighbours = cols[np.argsort(rows, kind="stable")]
    indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=len(row_match)))))
    for _ in range(min(len(row_match), len(col_match)) + 1):  # every round but the last adds a match
        free_rows = np.flatnonzero(row_match < 0)
        if len(free_rows) == 0:
            return
        tree_of_row = np.full(len(row_match), -1, dtype=np.int64)
        tree_of_row[free_rows] = free_rows
        parent_of_col = np.full(len(col_match), -1, dtype=np.int64)
        ends = []
        frontier = free_rows
        while len(frontier):
            counts = indptr[frontier + 1] - indptr[frontier]
            edge_rows = np.repeat(frontier, counts)
            # positions indptr[r] .. indptr[r+1]-1 of every frontier row, concatenated
            positions = np.arange(counts.sum()) + np.repeat(indptr[frontier] - np.cumsum(counts) + counts, counts)
            reached = neighbours[positions]
            new = parent_of_col[reached] < 0
            reached, first = np.unique(reached[new], return_index=True)
            parents = edge_rows[new][first]
            parent_of_col[reached] = parents
            is_free = col_match[reached] < 0
            ends.append(reached[is_free])
            frontier = col_match[reached[~is_free]]
            tree_of_row[frontier] = tree_of_row[parents[~is_free]]
        ends = np.concatenate(ends)
        if len(ends) == 0:
            return
        _, one_per_tree = np.unique(tree_of_row[parent_of_col[ends]], return_index=True)
        _flip_paths(ends[one_per_tree], parent_of_col, row_match, col_match)
    raise RuntimeError("augmenting rounds did not converge: the matching is inconsistent")


def _flip_paths(path_cols: np.ndarray, parent_of_col: np.ndarray, row_match: np.ndarray, col_match: np.ndarray) -> None:
    """Flip disjoint augmenting paths, walking all of them back to their roots at once."""
    for _ in range(len(row_match)):  # a path holds each row at most once
        path_rows = parent_of_col[path_cols]
        previous = row_match[path_rows]
        row_match[path_rows] = path_cols
        col_match[path_cols] = path_rows
        path_cols = previous[previous >= 0]
        if len(path_cols) == 0:
            return
    raise RuntimeError("augmenting path longer than the graph: the matching is inconsistent")
