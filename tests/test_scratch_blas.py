"""scratch_layers.blas: the BLAS thread control (through threadpoolctl) and the row-block
helpers that spread a batch's large passes over worker threads. Results must not depend
on whether the work was split, nor on how many workers predict uses."""
import contextlib
import os
import sys
import threading

import numpy as np
import pytest

from scratch_layers import blas

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras, randomize_weights, save_load  # noqa: E402

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
    """blas_info() reports the kernel choice of NumPy's OpenBLAS (as a fresh threadpoolctl
    scan sees it, not another library's OpenBLAS), and the forcing variable."""
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


# ----------------------------------------------------------------------------- blas_threads
WAIT_S = 30


def _release_openblas_control(threadpoolctl):
    """threadpoolctl (3.8) makes the thread that sets OpenBLAS's count its only
    "controlling thread" while that thread lives; give it back as blas.py does."""
    release = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if release is not None:
        release()


@pytest.fixture
def blas_counts():
    """``counts()``: the thread count of each BLAS library blas.py controls, read back
    through a threadpoolctl controller of the test's own (not blas.py's). Those are the
    libraries loaded when blas.py first looked, NumPy's among them; one loaded later by
    another package (e.g. SciPy's OpenBLAS, with Keras) is not NumPy's and is left alone.
    The count starts at 3, so that setting 1 shows (OpenBLAS grows its pool beyond the
    CPU count on request), and is restored afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    controlled = {os.path.realpath(lib.filepath) for lib in blas._controllers()}
    libs = [lib for lib in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
            if os.path.realpath(lib.filepath) in controlled]
    if not libs:
        pytest.skip("no BLAS library found")

    def set_counts(counts):
        for lib, n in zip(libs, counts):
            lib.set_num_threads(n)
        _release_openblas_control(threadpoolctl)

    def counts():
        return [lib.num_threads for lib in libs]

    before = counts()
    set_counts([3] * len(libs))
    if counts() != [3] * len(libs):
        set_counts(before)
        pytest.skip(f"cannot set the BLAS thread count to 3 (reads {counts()})")
    yield counts
    set_counts(before)


def test_blas_threads_sets_the_count_inside_and_restores_it_after(blas_counts):
    with blas.blas_threads(1):
        assert set(blas_counts()) == {1}
    assert set(blas_counts()) == {3}
    with blas.blas_threads(2):
        assert set(blas_counts()) == {2}
    assert set(blas_counts()) == {3}


def test_nested_blas_threads_keep_the_outer_count_until_the_outermost_leaves(blas_counts):
    with blas.blas_threads(1):
        with blas.blas_threads(1):
            assert set(blas_counts()) == {1}
        assert set(blas_counts()) == {1}, "an inner leaver must not restore"
        with blas.blas_threads(1):
            assert set(blas_counts()) == {1}
    assert set(blas_counts()) == {3}
    assert blas._depth == 0


def test_the_count_is_restored_when_the_body_raises(blas_counts):
    with pytest.raises(ZeroDivisionError), blas.blas_threads(1):
        1 / 0
    assert set(blas_counts()) == {3}
    assert blas._depth == 0


@pytest.mark.parametrize("other_enters_first", [True, False], ids=["other-in-first", "main-in-first"])
@pytest.mark.parametrize("other_leaves_first", [True, False], ids=["other-out-first", "main-out-first"])
def test_two_threads_at_once_the_first_entrant_sets_and_the_last_leaver_restores(
        blas_counts, other_enters_first, other_leaves_first):
    """The main thread and another one overlap inside blas_threads(1) in every order: the
    count is 1 while either is inside and back to 3 once both have left, also when the
    thread that restores is not the one that set it (threadpoolctl ignores a set from a
    thread other than OpenBLAS's controlling thread unless the control is given back)."""
    go_in, inside, go_out, left = (threading.Event() for _ in range(4))
    errors = []

    def other():
        try:
            assert go_in.wait(WAIT_S)
            with blas.blas_threads(1):
                inside.set()
                assert go_out.wait(WAIT_S)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            inside.set()
            left.set()

    t = threading.Thread(target=other)
    t.start()
    with contextlib.ExitStack() as main:
        if other_enters_first:
            go_in.set()
            assert inside.wait(WAIT_S)
            assert set(blas_counts()) == {1}
            main.enter_context(blas.blas_threads(1))
        else:
            main.enter_context(blas.blas_threads(1))
            assert set(blas_counts()) == {1}
            go_in.set()
            assert inside.wait(WAIT_S)
        assert set(blas_counts()) == {1}
        if other_leaves_first:
            go_out.set()
            assert left.wait(WAIT_S)
            assert set(blas_counts()) == {1}, "main is still inside"
    if not other_leaves_first:
        assert set(blas_counts()) == {1}, "the other thread is still inside"
        go_out.set()
        assert left.wait(WAIT_S)
    t.join(WAIT_S)
    assert not errors, errors
    assert set(blas_counts()) == {3}
    assert blas._depth == 0


def test_a_thread_after_the_main_one_still_sets_the_count(blas_counts):
    """Once the main thread has used blas_threads, another thread's use must still take
    effect (the main thread must not stay threadpoolctl's controlling thread)."""
    with blas.blas_threads(1):
        pass
    seen = []

    def other():
        with blas.blas_threads(1):
            seen.append(blas_counts())
        seen.append(blas_counts())

    t = threading.Thread(target=other)
    t.start()
    t.join(WAIT_S)
    assert [set(c) for c in seen] == [{1}, {3}]


def test_one_controller_is_built_and_kept(monkeypatch):
    """The loaded libraries are scanned once, not on every call."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    libs = blas._controllers()

    def no_new_scan(*a, **k):
        raise AssertionError("a new ThreadpoolController was built")
    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", no_new_scan)
    with blas.blas_threads(1), blas.blas_threads(1):
        blas.blas_info()
    assert blas._controllers() is libs


def test_without_a_blas_library_everything_is_a_no_op(monkeypatch):
    monkeypatch.setattr(blas, "_blas", [])
    with blas.blas_threads(1):
        assert blas._depth == 0
    assert blas.blas_info()["openblas_core"] is None


# ----------------------------------------------------------------------------- predict workers
@pytest.fixture(scope="module")
def small_cnn_path(tmp_path_factory):
    k = keras()
    L = k.layers
    m = k.Sequential([k.Input((24, 24, 3)),
                      L.Conv2D(8, 3, padding="same", use_bias=False), L.BatchNormalization(), L.ReLU(),
                      L.MaxPooling2D(),
                      L.Conv2D(12, 3, activation="relu"), L.AveragePooling2D(2),
                      L.Flatten(), L.Dense(16, activation="tanh"), L.Dense(10, activation="softmax")])
    _, path = save_load(randomize_weights(m, seed=3), tmp_path_factory.mktemp("cnn"))
    return path


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_is_bit_identical_for_any_worker_count(small_cnn_path, dtype, blas_counts):
    """Model.predict on a batch of 9 chunks gives the same bits with 1, 2 and 3 worker
    threads, and every chunk runs with one BLAS thread."""
    import scratch_layers
    sm = scratch_layers.load_model(small_cnn_path, dtype=dtype)
    x = np.random.default_rng(5).uniform(0, 1, size=(70, 24, 24, 3)).astype("float32")
    chunk = 8  # 9 chunks, the last one short: several per worker
    seen = []
    run = sm._run

    def counting_run(xs, *a, **kw):
        seen.append((threading.get_ident(), tuple(blas_counts())))
        return run(xs, *a, **kw)
    sm._run = counting_run

    outs = {}
    for workers in (1, 2, 3):
        sm.n_workers = workers
        seen.clear()
        outs[workers] = sm.predict(x, batch_size=chunk)
        assert len(seen) == 9
        assert {c for _, c in seen} == {(1,) * len(blas_counts())}, "one BLAS thread in every chunk"
        if workers > 1:
            assert len({t for t, _ in seen}) > 1, "the chunks ran on several worker threads"
    assert set(blas_counts()) == {3}
    assert outs[1].dtype == dtype and outs[1].shape == (70, 10)
    assert np.isfinite(outs[1]).all()
    for workers in (2, 3):
        assert np.array_equal(outs[workers], outs[1]), f"{workers} workers differ from 1"
