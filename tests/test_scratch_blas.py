"""scratch_layers.blas: the row-block helpers that spread a batch's large passes over
worker threads. Results must not depend on whether the work was split."""
import numpy as np
import pytest

from scratch_layers import blas

pytestmark = pytest.mark.scratch


@pytest.fixture
def two_workers(monkeypatch):
    monkeypatch.setattr(blas, "default_workers", lambda: 2)


def test_small_work_runs_once_on_the_whole_range(two_workers):
    seen = blas.for_blocks(lambda s: (s.start, s.stop), 10, blas.PARALLEL_MIN_ITEMS - 1)
    assert seen == [(0, 10)]


def test_large_work_is_split_into_consecutive_blocks_in_order(two_workers):
    seen = blas.for_blocks(lambda s: (s.start, s.stop), 7, blas.PARALLEL_MIN_ITEMS)
    assert seen == [(0, 3), (3, 7)]


def test_a_pool_worker_does_not_split_again(two_workers):
    """A nested split would wait on the pool it runs in; it runs whole instead."""
    big = blas.PARALLEL_MIN_ITEMS
    inner = blas.for_blocks(lambda s: blas.for_blocks(lambda t: (t.start, t.stop), 5, big), 4, big)
    assert inner == [[(0, 5)], [(0, 5)]]


def test_block_sum_and_matmuls_equal_the_unsplit_results(two_workers):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(blas.PARALLEL_MIN_ROWS + 3, 7))
    b = rng.normal(size=(7, 5))
    bias = rng.normal(size=5)
    total = blas.block_sum(lambda s: a[s].sum(axis=0), len(a), blas.PARALLEL_MIN_ITEMS)
    np.testing.assert_allclose(total, a.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(blas.rows_matmul(a, b, bias), a @ b + bias, rtol=1e-13)
    c = rng.normal(size=(len(a), 4))
    np.testing.assert_allclose(blas.rows_matmul_tn(a, c), a.T @ c, rtol=1e-12)


def test_blas_info_names_the_kernels_threadpoolctl_sees():
    """blas_info() reads OpenBLAS's kernel choice through ctypes; threadpoolctl, an
    independent reader, must see the same core, and the forcing variable is reported."""
    import os

    threadpoolctl = pytest.importorskip("threadpoolctl")
    info = blas.blas_info()
    openblas = [i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"
                and "numpy" in i["filepath"]]
    if not openblas:
        assert info["openblas_core"] is None
        return
    assert info["openblas_core"] == openblas[0]["architecture"]
    assert info["OPENBLAS_CORETYPE"] == os.environ.get("OPENBLAS_CORETYPE")
    if info["OPENBLAS_CORETYPE"]:  # OpenBLAS honours the variable (case-insensitively)
        assert info["openblas_core"].lower() == info["OPENBLAS_CORETYPE"].lower()
