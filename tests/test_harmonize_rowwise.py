"""Row-wise products: a row's bits do not depend on the other rows (harmonize.rowwise)."""

from __future__ import annotations

import numpy as np
import pytest

from neuroharmony_bids.harmonize import rowwise


def _positions_agree(a: np.ndarray, b: np.ndarray, tile: int) -> np.ndarray:
    """Rows of ``row_matmul(a, b)`` that differ from the row computed alone."""
    whole = rowwise.row_matmul(a, b, tile=tile)
    alone = np.vstack([rowwise.row_matmul(a[[i]], b, tile=tile) for i in range(len(a))])
    return np.flatnonzero((whole != alone).any(axis=1))


# products as the harmonizer makes them (design 5-12 columns, 68 IQMs, ~100 regions) and
# larger ones, in which BLAS uses its packed kernels
@pytest.mark.parametrize("tile", [rowwise.ROW_TILE, rowwise.SMALL_TILE])
@pytest.mark.parametrize("k", [5, 12, 68, 107, 300])
@pytest.mark.parametrize("m", [7, 107, 300])
def test_row_matmul_gives_each_row_the_bits_it_has_alone(k, m, tile):
    rng = np.random.default_rng([k, m])
    a = rng.normal(size=(tile + 9, k))  # every place in a tile, and a short tile
    b = rng.normal(size=(k, m))
    got = rowwise.row_matmul(a, b, tile=tile)
    np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12)
    assert not len(_positions_agree(a, b, tile))
    assert not len(_positions_agree(a, np.ascontiguousarray(b.T).T, tile))  # a gain's W.T


def test_row_matmul_order_batch_and_layout_change_no_bit():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(200, 117))
    b = rng.normal(size=(117, 101))
    whole = rowwise.row_matmul(a, b)
    order = rng.permutation(len(a))
    np.testing.assert_array_equal(rowwise.row_matmul(a[order], b), whole[order])
    big = np.vstack([rng.normal(size=(37, 117)), a, rng.normal(size=(5, 117))])
    np.testing.assert_array_equal(rowwise.row_matmul(big, b)[37:237], whole)
    # a strided left-hand side, an output view
    wide = np.hstack([a, a])[:, :117]
    out = np.full((200, 205), np.nan)
    got = rowwise.row_matmul(wide, b, out=out[:, 3:104])
    assert np.shares_memory(got, out)
    np.testing.assert_array_equal(out[:, 3:104], whole)


@pytest.mark.parametrize("tile", [rowwise.ROW_TILE, rowwise.SMALL_TILE])
@pytest.mark.parametrize("k", [5, 68, 107])
def test_lanes_matmul_gives_each_scan_the_bits_it_has_alone_and_row_matmul_the_same(k, tile):
    rng = np.random.default_rng([k, tile])
    xt = rng.normal(size=(k, 2 * tile + 9))  # one scan per column, a short last tile
    m = rng.normal(size=(101, k))
    got = rowwise.lanes_matmul(m, xt, tile=tile)
    np.testing.assert_allclose(got, m @ xt, rtol=1e-12, atol=1e-12)
    for i in range(xt.shape[1]):
        np.testing.assert_array_equal(
            rowwise.lanes_matmul(m, xt[:, [i]], tile=tile)[:, 0], got[:, i]
        )
    # a row-major caller's layout (xt the transpose of rows) and row_matmul: the same bits
    np.testing.assert_array_equal(
        rowwise.lanes_matmul(m, np.ascontiguousarray(xt.T).T, tile=tile), got
    )
    np.testing.assert_array_equal(rowwise.row_matmul(xt.T, m.T, tile=tile), got.T)
    # a gathered subset of the columns, and an output view
    pick = rng.permutation(xt.shape[1])[:7]
    np.testing.assert_array_equal(
        rowwise.lanes_matmul(m, np.take(xt, pick, axis=1), tile=tile), got[:, pick]
    )
    out = np.full((101, xt.shape[1] + 5), np.nan)
    assert np.shares_memory(rowwise.lanes_matmul(m, xt, out=out[:, 2:-3], tile=tile), out)
    np.testing.assert_array_equal(out[:, 2:-3], got)


@pytest.mark.parametrize("tile", [rowwise.ROW_TILE, rowwise.SMALL_TILE])
def test_lanes_quadratic_and_row_reduce_are_per_scan(tile):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(300, 107))
    m = rng.normal(size=(107, 107))
    P = m @ m.T
    q = rowwise.lanes_quadratic(z.T, P, tile=tile)
    np.testing.assert_allclose(q, np.einsum("ij,jk,ik->i", z, P, z), rtol=1e-12)
    np.testing.assert_array_equal(
        rowwise.lanes_quadratic(np.ascontiguousarray(z.T), P, tile=tile), q
    )
    rms = rowwise.row_reduce(lambda t: np.sqrt(np.mean(t**2, axis=1)), z)
    np.testing.assert_allclose(rms, np.sqrt(np.mean(z**2, axis=1)), rtol=1e-15)
    for i in range(0, 300, 7):
        assert rowwise.lanes_quadratic(z[[i]].T, P, tile=tile)[0] == q[i]
        assert rowwise.lanes_quadratic(z[i : i + 70].T, P, tile=tile)[0] == q[i]
        assert rowwise.row_reduce(lambda t: np.sqrt(np.mean(t**2, axis=1)), z[[i]])[0] == rms[i]
