"""Row-wise arithmetic whose result for a row does not depend on the other rows of the batch.

Why: in single-scan mode each scan is harmonized on its own, so its numbers must be the same
bits whether it is harmonized alone, in a 5-row table or in a 100k-row table, in whatever chunk
(a participant's output must not change with how a cluster splits the jobs). A BLAS product
does not give that by itself: NumPy calls ``gemv`` for one row and ``gemm`` for several, and
OpenBLAS picks its kernels (a small-matrix kernel, edge kernels for leftover rows) by the
matrix sizes, and in a kernel a row's place can matter. Here every product goes through BLAS
in tiles of exactly ``ROW_TILE`` rows (the last tile padded with zeros), so every row meets
the same call with the same shapes, with the rows across the SIMD lanes (see
:func:`lanes_matmul`; the harmonizer keeps its arrays one scan per column, as BLAS wants them). Elementwise NumPy arithmetic needs no care: each element is computed on
its own. Checked for OpenBLAS (NumPy's wheels) by tests/test_harmonize_rowwise.py; another
BLAS may pick its kernels otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Rows per BLAS call. A multiple of every kernel's row blocking; large enough that the call
#: overhead and packing of the right-hand matrix are small beside the product (a 1-row table
#: pays for 128 rows: microseconds). 128 rather than 64: ~10 % less CPU per 100k scans on the
#: shipped model, the same bits (a scan is one column of the product either way).
ROW_TILE = 128
#: Rows per call for the few scans with a region flagged (a handful per flag pattern: a
#: full tile would be mostly padding). Such a scan always goes this way, so its bits too
#: are the same in any batch.
SMALL_TILE = 16


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    """A short tile as a full C-contiguous tile of ``size`` rows, zero rows after ``rows``."""
    tile = np.zeros((size, *rows.shape[1:]), dtype=rows.dtype)
    tile[: len(rows)] = rows
    return tile


def lanes_matmul(
    m: np.ndarray, xt: np.ndarray, out: np.ndarray | None = None, tile: int = ROW_TILE
) -> np.ndarray:
    """``m @ xt`` for ``xt`` with one scan per column (k × scans): each column's bits
    independent of the other columns.

    Every ``tile``-column tile of ``xt`` (the last padded with zero columns) is one BLAS call
    of the same shapes, the scans across SIMD lanes (OpenBLAS's column-major ``M``): every scan
    meets the same arithmetic whatever its place in the tile. (With the scans as ``N`` they are
    blocked in kernels of different widths: a scan's bits would then depend on its place once
    the product is large enough for the packed kernels.) The result is scan-minor too (one row
    per row of ``m``), so no product needs a transposed copy. ``out`` (may be a view with
    contiguous rows) receives it; returned. A scan's bits depend on ``tile``: a caller passes
    the same ``tile`` for the same kind of scan (see ``SMALL_TILE``), and ``xt`` in the same
    layout (row- or column-major: OpenBLAS's kernels for small products differ by layout).
    """
    m = np.ascontiguousarray(m)
    n = xt.shape[1]
    if xt.itemsize not in xt.strides:  # BLAS needs unit steps along one axis (else NumPy's loop)
        xt = np.ascontiguousarray(xt)
    if out is None:
        out = np.empty((len(m), n), dtype=np.result_type(m, xt))
    full = n - n % tile
    for start in range(0, full, tile):
        np.matmul(m, xt[:, start : start + tile], out=out[:, start : start + tile])
    if full < n:  # the last tile, padded with zero columns, laid out as the full tiles
        # (OpenBLAS picks its small-matrix kernels by layout too)
        if xt.strides[1] == xt.itemsize:
            pad = np.zeros((xt.shape[0], tile), dtype=xt.dtype)
        else:
            pad = np.zeros((tile, xt.shape[0]), dtype=xt.dtype).T
        pad[:, : n - full] = xt[:, full:]
        out[:, full:] = np.matmul(m, pad)[:, : n - full]
    return out


def row_matmul(
    a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, tile: int = ROW_TILE
) -> np.ndarray:
    """``a @ b`` (``a``: rows × k), each row's bits independent of the other rows of ``a``:
    :func:`lanes_matmul` of the transposes (the same bits), for row-major callers."""
    a = np.ascontiguousarray(a)
    if out is None:
        out = np.empty((len(a), b.shape[1]), dtype=np.result_type(a, b))
    out[...] = lanes_matmul(b.T, a.T, tile=tile).T
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


def lanes_quadratic(zt: np.ndarray, P: np.ndarray, tile: int = ROW_TILE) -> np.ndarray:
    """Per scan ``z' P z`` of ``zt`` (one scan per column), each scan's bits independent of
    the other scans: the product by :func:`lanes_matmul`, the sum over regions on fixed
    ``tile``-column tiles (one plan for every tile, each column summed on its own)."""
    zt = np.ascontiguousarray(zt)
    zp = lanes_matmul(P.T, zt, tile=tile)
    n = zt.shape[1]
    out = np.empty(n)
    full = n - n % tile
    for start in range(0, full, tile):
        cut = slice(start, start + tile)
        out[cut] = np.einsum("ij,ij->j", zp[:, cut], zt[:, cut])
    if full < n:
        rest = [np.zeros((len(zt), tile)) for _ in range(2)]
        rest[0][:, : n - full], rest[1][:, : n - full] = zp[:, full:], zt[:, full:]
        out[full:] = np.einsum("ij,ij->j", *rest)[: n - full]
    return out
