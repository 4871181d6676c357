"""Spatially disjoint train/validation splits and class balancing.

Neighbouring chips look alike (same fields, same roofs, same illumination), so a chip-by-chip random
split puts near-copies of validation chips into training and reports accuracy the model will not have on
a new area. geoclf therefore splits whole spatial blocks (squares of ``block_size_m`` snapped to the CRS)
or whole scenes, and assigns them so that every class appears in both splits in about the asked ratio.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tiling.errors import InputError

SPLIT_METHODS = ("blocks", "scene")


def block_keys(crs: pd.Series, left: np.ndarray, bottom: np.ndarray, block_size_m: float) -> pd.Series:
    """Key of the spatial block holding each chip's lower-left corner."""
    bx = np.floor(np.asarray(left) / block_size_m).astype(np.int64)
    by = np.floor(np.asarray(bottom) / block_size_m).astype(np.int64)
    return crs.astype(str) + ":" + pd.Series(bx, index=crs.index).astype(str) + "_" + pd.Series(
        by, index=crs.index).astype(str)


def assign_split(groups: pd.Series, labels: pd.Series, val_fraction: float = 0.2, seed: int = 0) -> pd.Series:
    """Assign whole groups (blocks or scenes) to ``train`` or ``val``.

    Groups are visited in a seeded random order; a group goes to validation when most of its chips fill
    classes whose validation share is still below ``val_fraction``. This keeps each class near the asked
    ratio in both splits without ever splitting a group.
    """
    return groups.map(assign_group_splits(pd.crosstab(groups, labels), val_fraction, seed))


def assign_group_splits(counts: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0) -> pd.Series:
    """The split of every group from its chips per class alone: what :func:`assign_split` assigns.

    Args:
        counts: chips per group (rows) and class (columns), rows sorted by group and columns by class (the
            table ``pd.crosstab(groups, labels)`` gives); a planner that never holds the chips sums it from
            per-partition counts.
        val_fraction: share of chips per class aimed for validation.
        seed: seed of the order groups are visited in.

    Returns:
        ``"train"`` or ``"val"`` per group (indexed like ``counts``).
    """
    if not 0 < val_fraction < 1:
        raise InputError(f"the validation fraction must be between 0 and 1, not {val_fraction}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(counts))
    need = counts.sum(axis=0).to_numpy(dtype=float) * val_fraction
    is_val = np.zeros(len(counts), dtype=bool)
    table = counts.to_numpy(dtype=float)
    for i in order:
        gain = np.minimum(table[i], np.maximum(need, 0)).sum()
        if gain > 0 and gain >= 0.5 * table[i].sum():
            is_val[i] = True
            need -= table[i]
    if is_val.all() and len(is_val) > 1:  # never leave training empty
        is_val[order[0]] = False
    return pd.Series(np.where(is_val, "val", "train"), index=counts.index)


def balance_classes(labels: pd.Series, splits: pd.Series, seed: int = 0) -> pd.Index:
    """Index of the rows kept when each split is undersampled to its rarest class (seeded)."""
    keep = []
    for split in sorted(splits.unique()):
        members = labels[splits == split]
        smallest = members.value_counts().min()
        for _, rows in members.groupby(members):
            keep.append(rows.sample(n=smallest, random_state=seed).index)
    return pd.Index(np.concatenate([k.to_numpy() for k in keep])) if keep else labels.index[:0]


def balanced_positions(members: int, kept: int, seed: int = 0) -> np.ndarray:
    """Which of a class's ``members`` chips of one split (in index order) :func:`balance_classes` keeps, from
    the counts alone: a mask of ``members`` booleans with ``kept`` set.

    ``balance_classes`` draws ``Series.sample(n=kept, random_state=seed)``, i.e. the first ``kept`` positions of
    ``RandomState(seed).permutation(members)``; drawn here the same way, so that a planner that streams the
    chips partition by partition keeps the very chips the in-memory index keeps (tests/test_tile_area.py
    compares both).
    """
    mask = np.zeros(members, dtype=bool)
    mask[np.random.RandomState(seed).permutation(members)[:kept]] = True
    return mask
