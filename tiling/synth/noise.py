"""Hashing and noise: pure functions of integer lattice coordinates, so any block of any scene can be
rendered on its own and agree with its neighbours (splitmix64 hashes, value noise, fBm, Worley cells).

Nothing here draws from a global random state: every value is a hash of a key and a place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def mix(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective, well-avalanched scramble of uint64 values."""
    h = (h ^ (h >> _S30)) * _M1
    h = (h ^ (h >> _S27)) * _M2
    return h ^ (h >> _S31)


def hash_keys(*keys: int | np.ndarray) -> np.ndarray:
    """A uint64 hash of integer keys (arrays broadcast); uint64 arithmetic wraps on purpose."""
    with np.errstate(over="ignore"):
        h = np.asarray(0x243F6A8885A308D3, dtype=np.uint64)
        for key in keys:
            if isinstance(key, int):  # Python ints of any size: keep their low 64 bits
                key = np.uint64(key & 0xFFFFFFFFFFFFFFFF)
            k = np.asarray(key)
            k = k.astype(np.int64).view(np.uint64) if k.dtype != np.uint64 else k
            h = mix(h ^ (k + GOLDEN))
        return h


def unit(h: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from uint64 hashes (the top 53 bits)."""
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def rehash(h: np.ndarray, salt: int) -> np.ndarray:
    """A second independent hash derived from a first one."""
    with np.errstate(over="ignore"):
        return mix(h ^ np.uint64(salt * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF))


def _lattice(key: int, ix: np.ndarray, iy: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int, int,
                                                               np.ndarray, np.ndarray]:
    """Hashes of the integer lattice around points, as a small table plus each point's flat index in it.

    Points of one block span few lattice cells, so hashing the table once and gathering is much cheaper
    than hashing four corners per point.

    Returns:
        ``(table, flat, x0, y0, width, gx, gy)``: the hashes of lattice cells ``[x0, x0 + width) x [y0, ...)``
        (a margin of one cell left and two right of the points), each point's flat index in the table, the
        table's origin and row width, and the lattice coordinates of the table's cells.
    """
    x0, x1 = int(ix.min()) - 1, int(ix.max()) + 2
    y0, y1 = int(iy.min()) - 1, int(iy.max()) + 2
    gx, gy = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
    width = x1 - x0 + 1
    gx, gy = gx.ravel(), gy.ravel()
    table = hash_keys(key, gx, gy)
    flat = (iy - y0) * width + (ix - x0)
    return table, flat, x0, y0, width, gx, gy


def value_noise(x: np.ndarray, y: np.ndarray, scale: float, key: int) -> np.ndarray:
    """Smooth value noise in [0, 1) with features about ``scale`` metres across (float32)."""
    if x.size == 0:
        return np.empty(0, dtype=np.float32)
    fx, fy = x * (1.0 / scale), y * (1.0 / scale)
    ixf, iyf = np.floor(fx), np.floor(fy)
    tx, ty = (fx - ixf).astype(np.float32), (fy - iyf).astype(np.float32)
    ix, iy = ixf.astype(np.int64), iyf.astype(np.int64)
    span = (int(ix.max()) - int(ix.min()) + 4) * (int(iy.max()) - int(iy.min()) + 4)
    if span <= 4 * x.size + 64:
        table, flat, _, _, width, _, _ = _lattice(key, ix, iy)
        values = unit(table).astype(np.float32)
        v00, v10 = values[flat], values[flat + 1]
        v01, v11 = values[flat + width], values[flat + width + 1]
    else:  # scattered points (e.g. a coarse grid over a large area): hash the corners directly
        v00 = unit(hash_keys(key, ix, iy)).astype(np.float32)
        v10 = unit(hash_keys(key, ix + 1, iy)).astype(np.float32)
        v01 = unit(hash_keys(key, ix, iy + 1)).astype(np.float32)
        v11 = unit(hash_keys(key, ix + 1, iy + 1)).astype(np.float32)
    sx = tx * tx * (3 - 2 * tx)
    sy = ty * ty * (3 - 2 * ty)
    top = v00 + (v10 - v00) * sx
    return top + (v01 + (v11 - v01) * sx - top) * sy


def fbm(x: np.ndarray, y: np.ndarray, scale: float, key: int, octaves: int = 3) -> np.ndarray:
    """Fractal value noise in [0, 1): ``octaves`` layers, each half the size and weight of the last."""
    total = np.zeros(x.shape, dtype=np.float32)
    weight, norm = 1.0, 0.0
    for octave in range(octaves):
        total += weight * value_noise(x, y, scale / 2**octave, key * 31 + octave)
        norm += weight
        weight *= 0.5
    return total / norm


@dataclass
class Cells:
    """Nearest feature points of a jittered grid (Worley cells) for a set of query points.

    Attributes:
        dx, dy: query point minus its nearest feature point, in metres.
        d1, d2: distances to the nearest and second-nearest feature points, in metres.
        cell: index of the nearest cell in the lattice table.
        cell2: index of the second-nearest cell (only if asked for, else None).
        hashes: the table's cell hashes; ``hashes[cell]`` identifies each point's feature.
        fx, fy: the table's feature point coordinates, in metres.
    """

    dx: np.ndarray
    dy: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    cell: np.ndarray
    cell2: np.ndarray | None
    hashes: np.ndarray
    fx: np.ndarray
    fy: np.ndarray

    @property
    def hash(self) -> np.ndarray:
        """Each query point's feature hash."""
        return self.hashes[self.cell]


def worley(x: np.ndarray, y: np.ndarray, spacing: float, key: int, jitter: float = 0.9,
           second_cell: bool = False) -> Cells:
    """Worley cells: one feature point per ``spacing`` grid cell, jittered inside it; nearest two per point.

    With feature points inside their own cells, the nearest one is always among the 3x3 neighbouring cells.
    """
    fx, fy = x * (1.0 / spacing), y * (1.0 / spacing)
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    table, flat, x0, y0, width, gx, gy = _lattice(key, ix, iy)
    # Coordinates relative to the table's corner, in cells, fit float32 (a block spans a few hundred
    # cells) and halve the memory traffic of the 3x3 search.
    lx, ly = (fx - x0).astype(np.float32), (fy - y0).astype(np.float32)
    px = ((gx - x0) + 0.5 + jitter * (unit(table) - 0.5)).astype(np.float32)
    py = ((gy - y0) + 0.5 + jitter * (unit(rehash(table, 1)) - 0.5)).astype(np.float32)
    best = np.full(x.shape, np.inf, dtype=np.float32)
    second = np.full(x.shape, np.inf, dtype=np.float32)
    cell = flat.copy()
    cell2 = flat.copy() if second_cell else None
    for offset in (-width - 1, -width, -width + 1, -1, 0, 1, width - 1, width, width + 1):
        index = flat + offset
        ddx = lx - px[index]
        ddy = ly - py[index]
        d = ddx * ddx
        d += ddy * ddy
        closer = d < best
        if cell2 is not None:
            np.copyto(cell2, index, where=~closer & (d < second))
            np.copyto(cell2, cell, where=closer)
        np.minimum(second, np.maximum(d, best), out=second)
        np.copyto(best, d, where=closer)
        np.copyto(cell, index, where=closer)
    return Cells(dx=(lx - px[cell]) * spacing, dy=(ly - py[cell]) * spacing, d1=np.sqrt(best) * spacing,
                  d2=np.sqrt(second) * spacing, cell=cell, cell2=cell2, hashes=table,
                  fx=(px.astype(np.float64) + x0) * spacing, fy=(py.astype(np.float64) + y0) * spacing)


