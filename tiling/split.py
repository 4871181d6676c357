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
    if not 0 < val_fraction < 1:
        raise InputError(f"the validation fraction must be between 0 and 1, not {val_fraction}")
    table = pd.crosstab(groups, labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    need = table.sum(axis=0).to_numpy(dtype=float) * val_fraction
    is_val = np.zeros(len(table), dtype=bool)
    counts = table.to_numpy(dtype=float)
    for i in order:
        gain = np.minimum(counts[i], np.maximum(need, 0)).sum()
        if gain > 0 and gain >= 0.5 * counts[i].sum():
            is_val[i] = True
            need -= counts[i]
    if is_val.all() and len(is_val) > 1:  # never leave training empty
        is_val[order[0]] = False
    split_of = pd.Series(np.where(is_val, "val", "train"), index=table.index)
    return groups.map(split_of)


def balance_classes(labels: pd.Series, splits: pd.Series, seed: int = 0) -> pd.Index:
    """Index of the rows kept when each split is undersampled to its rarest class (seeded)."""
    keep = []
    for split in sorted(splits.unique()):
        members = labels[splits == split]
        smallest = members.value_counts().min()
        for _, rows in members.groupby(members):
            keep.append(rows.sample(n=smallest, random_state=seed).index)
    return pd.Index(np.concatenate([k.to_numpy() for k in keep])) if keep else labels.index[:0]
