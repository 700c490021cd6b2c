"""Row-wise arithmetic whose result for a row does not depend on the other rows of the batch.

Why: in single-scan mode each scan is harmonized on its own, so its numbers must be the same
bits whether it is harmonized alone, in a 5-row table or in a 100k-row table, in whatever chunk
(a participant's output must not change with how a cluster splits the jobs). A BLAS product
does not give that by itself: NumPy calls ``gemv`` for one row and ``gemm`` for several, and
OpenBLAS picks its kernels (a small-matrix kernel, edge kernels for leftover rows) by the
matrix sizes, and in a kernel a row's place can matter. Here every product goes through BLAS
in tiles of exactly ``ROW_TILE`` rows (the last tile padded with zeros), so every row meets
the same call with the same shapes, with the rows across the SIMD lanes (see
:func:`row_matmul`). Elementwise NumPy arithmetic needs no care: each element is computed on
its own. Checked for OpenBLAS (NumPy's wheels) by tests/test_harmonize_rowwise.py; another
BLAS may pick its kernels otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Rows per BLAS call. A multiple of every kernel's row blocking; large enough that the call
#: overhead and packing of the right-hand matrix are small beside the product (a 1-row table
#: pays for 64 rows: microseconds).
ROW_TILE = 64
#: Rows per call for the few scans with a region flagged (a handful per flag pattern: a
#: 64-row tile would be mostly padding). Such a scan always goes this way, so its bits too
#: are the same in any batch.
SMALL_TILE = 16


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    """A short tile as a full C-contiguous tile of ``size`` rows, zero rows after ``rows``."""
    tile = np.zeros((size, *rows.shape[1:]), dtype=rows.dtype)
    tile[: len(rows)] = rows
    return tile


def row_matmul(
    a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, tile: int = ROW_TILE
) -> np.ndarray:
    """``a @ b`` (``a``: rows × k), each row's bits independent of the other rows of ``a``.

    Computed as ``(b' a')'`` tile by tile, so that the rows of ``a`` are the dimension BLAS
    runs across SIMD lanes (OpenBLAS's column-major ``M``): every row then meets the same
    arithmetic whatever its place in the tile. (As ``a @ b`` the rows are BLAS's ``N``,
    blocked in kernels of different widths: a row's bits then depend on its place in the tile
    once the product is large enough for the packed kernels.) ``out`` (rows × columns of
    ``b``, may be a view) receives the product; returned. A row's bits depend on ``tile``:
    a caller passes the same ``tile`` for the same kind of row (see ``SMALL_TILE``). A ``b``
    kept column-major (``b'`` contiguous) is used without a copy.
    """
    a = np.ascontiguousarray(a)
    bt = np.ascontiguousarray(b.T)
    n = len(a)
    if out is None:
        out = np.empty((n, len(bt)), dtype=np.result_type(a, b))
    part = np.empty((len(bt), tile))  # one tile of the product, transposed
    full = n - n % tile
    for start in range(0, full, tile):
        np.matmul(bt, a[start : start + tile].T, out=part)
        out[start : start + tile] = part.T
    if full < n:  # the last tile, padded with zero rows
        np.matmul(bt, _padded(a[full:], tile).T, out=part)
        out[full:] = part[:, : n - full].T
    return out


def row_reduce(
    fn: Callable[..., np.ndarray], *arrays: np.ndarray, tile: int = ROW_TILE
) -> np.ndarray:
    """``fn(*arrays)``, a per-row result (one value per row), computed tile by tile on
    ``ROW_TILE``-row C-contiguous tiles, so a reduction inside ``fn`` (a sum over a row, an
    einsum) runs on the same shapes whatever the batch."""
    arrays = tuple(np.ascontiguousarray(x) for x in arrays)
    n = len(arrays[0])
    out = np.empty(n)
    full = n - n % tile
    for start in range(0, full, tile):
        out[start : start + tile] = fn(*(x[start : start + tile] for x in arrays))
    if full < n:
        out[full:] = fn(*(_padded(x[full:], tile) for x in arrays))[: n - full]
    return out


def row_quadratic(z: np.ndarray, P: np.ndarray, tile: int = ROW_TILE) -> np.ndarray:
    """Per row ``z_i' P z_i``, each row's bits independent of the other rows of ``z``."""
    zp = row_matmul(z, P, tile=tile)
    return row_reduce(lambda a, t: np.einsum("ij,ij->i", a, t), zp, z, tile=tile)
