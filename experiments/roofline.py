"""A roofline of scratch_layers' predict: every step of the fused plan against the machine's
measured GEMM peak and memory bandwidth, and the whole forward pass split into GEMM time
and everything else.

Command line (prints markdown tables)::

    python -m experiments.roofline [cnn|resnet50|mobilenetv2|all] [--dtype float32|float64]
                                   [--images N] [--repeats R] [--json PATH]

``cnn`` is the study CNN baseline (full profile, first seed, from ``reports/models/``) on
the first 1,024 CIFAR-10 test images; ``resnet50`` and ``mobilenetv2`` are
``keras.applications`` models (``weights=None``, perturbed weights, 96x96 input, 10
classes) on 64 random images in [-1, 1], as in ``tests/test_benchmarks_applications.py``
(whose classifier scaling changes no timing and is left out).

What is measured, all in one process:

* :func:`machine_roofs`: ``np.matmul`` of two 2048x2048 matrices (:func:`gemm_peak`), best
  of 10, float32 and float64, with one BLAS thread (predict's setting per worker: the
  compute roof) and with every core; one more one-thread sample after each repeat of the
  steps, so the roof is measured under the conditions the steps ran in.
* :func:`memory_bandwidth`: ``np.add(a, b, out=c)`` on arrays that together take predict's
  chunk budget (:data:`scratch_layers.engine.model.CHUNK_BUDGET_BYTES`), counted as three
  arrays moved (as STREAM counts its add): the memory roof at the working-set size predict
  cuts its chunks to, so mostly a cache bandwidth, not DRAM's.
* :func:`node_roofline`: the plan run chunk by chunk (predict's chunk size) with one worker
  and one BLAS thread; each step timed (summed over chunks, the minimum over repeats) with
  the time of the GEMMs inside it (:func:`scratch_layers.profiling.gemm_clock`).
* :func:`forward_split`: ``model.predict(x)`` as users call it (its workers, one BLAS
  thread each): worker-seconds (wall x workers) split into the seconds inside GEMMs
  (``gemm_clock``, summed over the workers) and everything else (im2col, Winograd
  transforms, bias, activations, pooling, copies), with the process's CPU-seconds
  (``time.process_time``) as a check that the workers had the CPUs.

FLOPs come from the layers' shapes, never from how a layer computes: a convolution counts
``2 * Ho * Wo * kh * kw * Cin * F`` per image (nominal direct convolution), a Dense
``2 * in * out`` per row, a depthwise convolution ``2 * Ho * Wo * kh * kw * C * M``; a
BatchNormalization, activation or pooling folded into a step adds none. A convolution that
multiplies less than that (Winograd) can therefore show an *effective* GFLOP/s above the
GEMM peak. Bytes moved by a step: its inputs and its output once, plus its kernels once
per chunk. Its roof is ``min(GEMM peak, FLOP/B * bandwidth)`` (``bound`` says which); a
step without FLOPs is measured in GB/s against the bandwidth.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scratch_layers.blas import blas_info, blas_threads
from scratch_layers.engine import executor
from scratch_layers.engine.inputs import as_compute, prepare_inputs
from scratch_layers.engine.model import CHUNK_BUDGET_BYTES
from scratch_layers.profiling import gemm_clock

MODELS = ("cnn", "resnet50", "mobilenetv2")
APPLICATIONS = {"resnet50": "ResNet50", "mobilenetv2": "MobileNetV2"}
DEFAULT_IMAGES = {"cnn": 1024, "resnet50": 64, "mobilenetv2": 64}
APPLICATION_SIZE = 96
GEMM_SIZE = 2048

# Keras class name -> roofline kind (a Conv2D with groups > 1 counts as depthwise)
KINDS = {"Conv1D": "conv", "Conv2D": "conv", "Dense": "dense",
         "DepthwiseConv1D": "depthwise", "DepthwiseConv2D": "depthwise"}
KIND_ORDER = ("conv", "depthwise", "dense", "other")
PASS_THROUGH = {"Flatten", "Reshape", "Identity"}


# ---------------------------------------------------------------------------- machine roofs

def _square_operands(dtype, size):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    return a, rng.standard_normal((size, size)).astype(dtype), np.empty_like(a)


def _matmul_seconds(operands, threads) -> float:
    a, b, c = operands
    with blas_threads(threads):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        return time.perf_counter() - start


def gemm_peak(dtype="float32", threads=1, size=GEMM_SIZE, repeats=10) -> float:
    """GFLOP/s of ``np.matmul`` on two ``size`` x ``size`` matrices of ``dtype`` with
    ``threads`` BLAS threads: the best of ``repeats`` after one warm-up."""
    operands = _square_operands(dtype, size)
    _matmul_seconds(operands, threads)
    return 2 * size ** 3 / min(_matmul_seconds(operands, threads) for _ in range(repeats)) / 1e9


def memory_bandwidth(dtype="float32", nbytes=CHUNK_BUDGET_BYTES, repeats=200) -> float:
    """GB/s of ``np.add(a, b, out=c)`` (one thread) on three arrays of ``nbytes`` in all,
    counted as ``3 * a.nbytes`` moved; the best of ``repeats``."""
    n = max(1, nbytes // 3 // np.dtype(dtype).itemsize)
    a, b = np.ones(n, dtype), np.full(n, 2, dtype)
    c = np.empty_like(a)
    np.add(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.add(a, b, out=c)
        best = min(best, time.perf_counter() - start)
    return 3 * a.nbytes / best / 1e9


def machine_roofs(rounds=10) -> dict:
    """The roofs a roofline is drawn against: sgemm and dgemm peaks with one BLAS thread
    and with every core (``gemm_gflops[dtype][threads]``, as :func:`gemm_peak`), and the
    bandwidth (:func:`memory_bandwidth`). The four GEMM settings take turns, ``rounds``
    times each, and each keeps its best: a burst of other work on the machine then spoils
    one sample of each, not every sample of one."""
    cores = os.cpu_count() or 1
    settings = [(d, t) for d in ("float32", "float64") for t in sorted({1, cores})]
    operands = {d: _square_operands(d, GEMM_SIZE) for d in ("float32", "float64")}
    best = {}
    for d, t in settings:
        _matmul_seconds(operands[d], t)
        best[d, t] = float("inf")
    for _ in range(rounds):
        for d, t in settings:
            best[d, t] = min(best[d, t], _matmul_seconds(operands[d], t))
    peaks = {d: {str(t): 2 * GEMM_SIZE ** 3 / best[d, t] / 1e9 for dd, t in settings if dd == d}
             for d in ("float32", "float64")}
    return {"gemm_gflops": peaks, "bandwidth_gbs": memory_bandwidth(), "gemm_size": GEMM_SIZE,
            "bandwidth_bytes": CHUNK_BUDGET_BYTES}


def roofs_for(roofs, dtype) -> dict:
    """A copy of ``roofs`` with ``peak_gflops``: the one-thread GEMM peak of ``dtype``,
    predict's roof."""
    dtype = str(np.dtype(dtype))
    return dict(roofs, dtype=dtype, peak_gflops=roofs["gemm_gflops"][dtype]["1"],
                gemm_gflops={d: dict(p) for d, p in roofs["gemm_gflops"].items()})


def _resample_roofs(roofs, operands):
    """One more sample of the one-thread GEMM peak and of the bandwidth, each kept when
    it beats the best so far (taken between the roofline's repeats, so the roofs are
    measured under the same conditions as the steps)."""
    size = operands[0].shape[0]
    peak = max(roofs["peak_gflops"], 2 * size ** 3 / _matmul_seconds(operands, 1) / 1e9)
    roofs["peak_gflops"] = roofs["gemm_gflops"][roofs["dtype"]]["1"] = peak
    roofs["bandwidth_gbs"] = max(roofs["bandwidth_gbs"], memory_bandwidth(repeats=20))


# ------------------------------------------------------------------------ shapes and FLOPs

def tensor_shapes(model, sample) -> dict:
    """tensor id -> per-sample shape, from one unfused run on ``sample`` (one sample per
    input, already prepared)."""
    xs = as_compute(model, sample)
    shapes = {t: np.shape(x)[1:] for t, x in zip(model.graph.inputs, xs)}

    def keep(step, y, live):
        shapes[step.output] = np.shape(y)[1:]
    with blas_threads(1):
        executor.run(model.graph, model._unfused, model._unfused_frees, xs, on_output=keep)
    return shapes


def node_kind(layer) -> str:
    """conv, dense, depthwise or other, from the layer's Keras class (and its config)."""
    kind = KINDS.get(layer.class_name, "other")
    if kind == "conv" and int((getattr(layer, "config", None) or {}).get("groups", 1) or 1) > 1:
        return "depthwise"
    return kind


def node_flops(layer, out_shape) -> int:
    """Nominal FLOPs of one node per sample, from shapes: ``2 * output positions * kernel
    size``, where the kernel is the layer's first weight in Keras' layout. That is
    ``2*Ho*Wo*kh*kw*Cin*F`` for a convolution, ``2*in*out`` per row for a Dense and
    ``2*Ho*Wo*kh*kw*C*M`` for a depthwise convolution; 0 for every other node."""
    if node_kind(layer) == "other" or not layer.weights:
        return 0
    channels_first = (getattr(layer, "config", None) or {}).get("data_format") == "channels_first"
    out_channels = out_shape[0] if channels_first and node_kind(layer) != "dense" else out_shape[-1]
    positions = int(np.prod(out_shape)) // int(out_channels)
    return 2 * positions * int(np.size(layer.weights[0]))


def is_view(step, y, inputs) -> bool:
    """Whether a step moved no data: a pass-through layer (a NoOp such as Dropout or a
    random augmentation at inference, Flatten, Reshape) whose output shares its input's
    memory. Other steps count their bytes even when they write in place."""
    passes = type(step[0]).__name__ == "NoOp" or step[0].class_name in PASS_THROUGH
    return passes and isinstance(y, np.ndarray) and any(
        isinstance(a, np.ndarray) and np.may_share_memory(y, a) for a in inputs)


def step_kind(step) -> str:
    kinds = {node_kind(n.layer) for n in step.nodes}
    return next((k for k in KIND_ORDER if k in kinds), "other")


def step_name(step) -> str:
    return "+".join(n.name for n in step.nodes)


# ------------------------------------------------------------------------------ measuring

def node_roofline(model, x, repeats=5, roofs=None) -> list[dict]:
    """One row per step of predict's plan on ``x``, run as predict runs it (the same
    chunks) but with one worker and one BLAS thread, ``repeats`` times: each step's
    seconds (summed over the chunks, the minimum over repeats) and the GEMM seconds inside
    it (from the same repeat), its nominal FLOPs and the bytes it moves. With ``roofs``
    (:func:`roofs_for`) each row also gets its roof and the fraction of it reached; the
    GEMM peak and the bandwidth in ``roofs`` are sampled again after every repeat (and
    raised in place when beaten), so a machine that runs slower for a while (a shared
    host) lowers steps and roofs alike."""
    xs = prepare_inputs(model, x, False)
    n = len(xs[0])
    chunk = model._chunk_size(xs)
    steps = model._plan
    shapes = tensor_shapes(model, [v[:1] for v in xs])
    index = {id(s): i for i, s in enumerate(steps)}
    best = [(float("inf"), 0.0, 0, 0)] * len(steps)  # seconds, gemm seconds, gemm flops, calls
    operands = None if roofs is None else _square_operands(roofs["dtype"], roofs["gemm_size"])
    views = [False] * len(steps)

    for _ in range(repeats):
        seconds = [0.0] * len(steps)
        gemm = [[0.0, 0, 0] for _ in steps]

        def timed(step, inputs, masks):
            i = index[id(step)]
            with gemm_clock() as clock:
                start = time.perf_counter()
                out = executor.run_step(step, inputs, masks)
                seconds[i] += time.perf_counter() - start
            gemm[i][0] += clock.seconds
            gemm[i][1] += clock.flops
            gemm[i][2] += clock.calls
            views[i] = is_view(step, out[0], inputs)
            return out
        with blas_threads(1):
            for s in range(0, n, chunk):
                executor.run(model.graph, steps, model._frees,
                             as_compute(model, [v[s:s + chunk] for v in xs]), run_step=timed)
        best = [b if b[0] <= t else (t, *g) for b, t, g in zip(best, seconds, gemm)]
        if roofs is not None:
            _resample_roofs(roofs, operands)

    itemsize = model.dtype.itemsize
    chunks = -(-n // chunk)
    rows = []
    for step, view, (sec, gsec, gflop, calls) in zip(steps, views, best):
        flops = n * sum(node_flops(node.layer, shapes[node.output]) for node in step.nodes)
        tensors = [t for t in step.inputs if t is not None] + [step.output]
        activations = 0 if view else n * sum(int(np.prod(shapes[t])) for t in tensors) * itemsize
        kernels = chunks * sum(int(np.size(w)) for node in step.nodes for w in node.layer.weights
                               if np.ndim(w) >= 2) * itemsize
        nbytes = activations + kernels
        row = {"step": step_name(step), "layer": step[0].class_name, "kind": step_kind(step), "view": view,
               "flops": int(flops), "bytes": int(nbytes), "seconds": sec, "gemm_seconds": gsec,
               "gemm_flops": int(gflop), "gemm_calls": int(calls),
               "gflops": flops / sec / 1e9 if sec else 0.0,
               "gbs": nbytes / sec / 1e9 if sec else 0.0,
               "intensity": flops / nbytes if nbytes else 0.0}
        if roofs is not None:
            add_roof(row, roofs)
        rows.append(row)
    return rows


def add_roof(row, roofs) -> dict:
    """The row's roof (GFLOP/s, or GB/s for a step without FLOPs), which of compute or
    memory bounds it, and the fraction of the roof and of the GEMM peak reached. A step
    whose output is a view of its input (a NoOp, a reshape) moves nothing and has no roof."""
    peak, bandwidth = roofs["peak_gflops"], roofs["bandwidth_gbs"]
    row["of_peak"] = row["gflops"] / peak if row["flops"] else None
    if row["flops"]:
        memory_roof = row["intensity"] * bandwidth
        row["bound"] = "compute" if peak <= memory_roof else "memory"
        row["roof"] = min(peak, memory_roof)
        row["of_roof"] = row["gflops"] / row["roof"]
    elif row["bytes"]:
        row["bound"], row["roof"], row["of_roof"] = "memory", bandwidth, row["gbs"] / bandwidth
    else:
        row["bound"], row["roof"], row["of_roof"] = "", None, None
    return row


def forward_split(model, x, repeats=5) -> dict:
    """``model.predict(x)`` as users call it (its own workers, one BLAS thread each), the
    fastest of ``repeats`` after one warm-up, split into GEMM time and the rest.

    ``worker_seconds`` = wall seconds x workers: the time the worker threads had. The GEMM
    seconds are ``gemm_clock``'s (wall time inside each GEMM call, summed over the
    workers), and ``rest_seconds`` = worker_seconds - GEMM seconds: im2col, Winograd
    transforms, bias, activations, pooling, copies, and a worker's idle time at the end
    when the chunks do not share out evenly. Both sides are wall time per thread, so
    they stay comparable when other processes share the CPUs. ``cpu_seconds``
    (``time.process_time``, every thread) is the check: about worker_seconds when the
    workers always ran, less when they waited (for a CPU other processes held, for the
    GIL, or idle at the end). ``gemm_gflops``: the FLOPs the GEMMs
    really did per GEMM second."""
    xs = prepare_inputs(model, x, False)
    chunk = model._chunk_size(xs)
    workers = max(1, min(model.n_workers, -(-len(xs[0]) // chunk)))
    model.predict(x)
    best = None
    for _ in range(repeats):
        with gemm_clock() as clock:
            wall, cpu = time.perf_counter(), time.process_time()
            model.predict(x)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if best is None or wall < best["wall_seconds"]:
            best = {"wall_seconds": wall, "cpu_seconds": cpu, "gemm_seconds": clock.seconds,
                    "gemm_flops": int(clock.flops), "gemm_calls": clock.calls}
    worker_seconds = best["wall_seconds"] * workers
    best.update(workers=workers, chunk=chunk, n_items=len(xs[0]), worker_seconds=worker_seconds,
                rest_seconds=max(0.0, worker_seconds - best["gemm_seconds"]),
                gemm_share=best["gemm_seconds"] / worker_seconds,
                gemm_gflops=best["gemm_flops"] / best["gemm_seconds"] / 1e9 if best["gemm_seconds"] else 0.0)
    return best


# -------------------------------------------------------------------------------- models

def study_cnn(n_images=DEFAULT_IMAGES["cnn"], dtype="float32"):
    """``(model, x)``: the study CNN baseline (full profile, first seed, from
    ``reports/models/``; never trained here) and the first ``n_images`` CIFAR-10 test images."""
    import scratch_layers
    from .families import family
    from .runs import get_trained

    fam = family("cnn")
    tm = get_trained(fam, fam.baseline, "full", fam.seeds("full", fam.baseline)[0], allow_train=False)
    x = fam.load_data().x_test[:n_images]
    return scratch_layers.load_model(tm.path, dtype=dtype), x


def perturb_weights(model, seed=2):
    """Random non-default weights, as ``tests/keras_factories.randomize_weights`` gives
    (kernels ~ N(0, 1/fan_in), biases/BN shifts ~ U(-0.5, 0.5), BN scales/variances
    ~ U(0.5, 1.5)): activations keep a sane range through a deep network."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape, path = tuple(v.shape), v.path
        if "variance" in path or "gamma" in path:
            val = rng.uniform(0.5, 1.5, shape)
        elif "moving_mean" in path or "beta" in path or "bias" in path:
            val = rng.uniform(-0.5, 0.5, shape)
        elif len(shape) >= 2:
            val = rng.normal(0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            val = rng.normal(0, 0.5, shape)
        v.assign(val.astype(np.float32))
    return model


def application_file(name, folder) -> Path:
    """``keras.applications.<name>`` (ResNet50, MobileNetV2), ``weights=None`` with
    perturbed weights, 96x96x3 input, 10 classes, saved as ``folder/<name>.keras``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    model = getattr(keras.applications, name)(weights=None, classes=10,
                                              input_shape=(APPLICATION_SIZE, APPLICATION_SIZE, 3))
    perturb_weights(model)
    path = Path(folder) / f"{name}.keras"
    model.save(path)
    return path


def application_images(n_images=DEFAULT_IMAGES["resnet50"], seed=0):
    """Uniform in [-1, 1] (the preprocessed range), as the applications benchmark's images."""
    return np.random.default_rng(seed).uniform(
        -1, 1, (n_images, APPLICATION_SIZE, APPLICATION_SIZE, 3)).astype(np.float32)


# --------------------------------------------------------------------------------- report

def measure(model, x, label, roofs, repeats=5) -> dict:
    """The roofline of ``model`` on ``x``: roofs, per-step rows and the forward split."""
    where = machine()
    roofs = roofs_for(roofs, model.dtype)
    rows = node_roofline(model, x, repeats, roofs)
    return {"model": label, "dtype": str(model.dtype), "n_items": len(x), "roofs": roofs,
            "rows": rows, "split": forward_split(model, x, repeats), "machine": where}


def machine() -> dict:
    """Date, commit (and whether scratch_layers/ has uncommitted changes), CPU, BLAS."""
    from .runs import cpu_description

    root = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    cpu = cpu_description()
    isa = "AVX-512" if "avx512f" in cpu["isa"] else "AVX2" if "avx2" in cpu["isa"] else "no AVX2"
    return {"date": datetime.date.today().isoformat(),
            "commit": git("rev-parse", "--short", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "--", "scratch_layers")),
            "cpu": f"{cpu['model']}, {isa}, {cpu['cores']} cores",
            "openblas_core": blas_info()["openblas_core"]}


def _ms(seconds):
    return f"{seconds * 1e3:.1f}" if seconds >= 0.01 else f"{seconds * 1e3:.2f}"


def _pct(fraction):
    return "" if fraction is None else f"{100 * fraction:.0f}%"


def _table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def group_rows(rows) -> list[dict]:
    """Conv, dense and depthwise steps one by one; the other steps merged per layer class
    (``Add (16 steps)``), in order of first appearance."""
    out, merged = [], {}
    for row in rows:
        if row["kind"] != "other":
            out.append(dict(row, steps=1))
            continue
        m = merged.get(row["layer"])
        if m is None:
            m = merged[row["layer"]] = dict(row, steps=0, flops=0, bytes=0, seconds=0.0,
                                            gemm_seconds=0.0, names=[])
            out.append(m)
        m["steps"] += 1
        m["names"].append(row["step"])
        for k in ("bytes", "seconds", "gemm_seconds"):
            m[k] += row[k]
    for m in merged.values():
        m["step"] = m["names"][0] if m["steps"] == 1 else f"{m['layer']} ({m['steps']} steps)"
        m["gbs"] = m["bytes"] / m["seconds"] / 1e9 if m["seconds"] else 0.0
        m["of_roof"] = m["gbs"] / m["roof"] if m["bytes"] and m.get("roof") else None
        if not m["bytes"]:
            m["bound"] = ""
    return out


def format_steps(result) -> str:
    """The per-step markdown table, with a total row."""
    rows = group_rows(result["rows"])
    body = []
    for r in rows:
        has_flops = r["flops"] > 0
        body.append([r["step"], r["kind"], f"{r['flops'] / 1e9:.3f}" if has_flops else "",
                     f"{r['bytes'] / 1e6:.1f}" if r["bytes"] else "view",
                     f"{r['intensity']:.1f}" if has_flops else "",
                     _ms(r["seconds"]), _ms(r["gemm_seconds"]) if r["gemm_seconds"] else "",
                     f"{r['gemm_flops'] / r['gemm_seconds'] / 1e9:.1f}" if r["gemm_seconds"] else "",
                     f"{r['gflops']:.1f}" if has_flops else "", f"{r['gbs']:.1f}" if r["bytes"] else "",
                     r.get("bound", ""), _pct(r.get("of_roof"))])
    all_rows = result["rows"]
    total = sum(r["seconds"] for r in all_rows)
    flops = sum(r["flops"] for r in all_rows)
    gemm_seconds = sum(r["gemm_seconds"] for r in all_rows)
    gemm_flops = sum(r["gemm_flops"] for r in all_rows)
    body.append(["**all steps**", "", f"{flops / 1e9:.3f}", f"{sum(r['bytes'] for r in all_rows) / 1e6:.1f}",
                 "", _ms(total), _ms(gemm_seconds),
                 f"{gemm_flops / gemm_seconds / 1e9:.1f}" if gemm_seconds else "",
                 f"{flops / total / 1e9:.1f}" if total else "", "", "", ""])
    return "\n".join(_table(["step", "kind", "GFLOP", "MB moved", "FLOP/B", "ms", "GEMM ms",
                             "GEMM GFLOP/s", "GFLOP/s", "GB/s", "bound", "% of roof"], body))


def format_kinds(result) -> str:
    """Time per kind of step (one worker), and the GEMM share inside it."""
    rows, total = result["rows"], sum(r["seconds"] for r in result["rows"]) or 1.0
    body = []
    for kind in KIND_ORDER:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        sec, gsec, flops = (sum(r[k] for r in rs) for k in ("seconds", "gemm_seconds", "flops"))
        body.append([kind, len(rs), f"{flops / 1e9:.3f}" if flops else "", _ms(sec),
                     _pct(sec / total), _ms(gsec) if gsec else "",
                     f"{flops / sec / 1e9:.1f}" if flops and sec else ""])
    return "\n".join(_table(["kind", "steps", "GFLOP", "ms", "share of time", "GEMM ms", "GFLOP/s"], body))


def format_split(result) -> str:
    """predict's wall time and its CPU-seconds split into GEMM and the rest."""
    s = result["split"]
    busy = "" if s["cpu_seconds"] >= 0.85 * s["worker_seconds"] else (
        f"\n\n**The workers waited**: the process ran {s['cpu_seconds']:.3f} CPU-seconds in "
        f"{s['worker_seconds']:.3f} worker-seconds ({_pct(1 - s['cpu_seconds'] / s['worker_seconds'])} "
        "of the workers' time without a CPU). Either other processes shared the CPUs (then "
        "every time here is inflated: measure again with nothing else running), or the workers "
        "waited for each other: for Python's GIL, which many small NumPy calls per chunk hold "
        "in turn, or at the end, when the chunks do not share out evenly.")
    return "\n".join(_table(
        ["workers", "wall s", "worker s (wall x workers)", "CPU s (process_time)", "GEMM s",
         "rest s", "GEMM share", "GEMM GFLOP/s"],
        [[s["workers"], f"{s['wall_seconds']:.3f}", f"{s['worker_seconds']:.3f}", f"{s['cpu_seconds']:.3f}",
          f"{s['gemm_seconds']:.3f}", f"{s['rest_seconds']:.3f}", _pct(s["gemm_share"]),
          f"{s['gemm_gflops']:.1f}"]])) + busy


def format_summary(results) -> str:
    """One line per roofline: the steps' time per kind (one worker), the GEMM share of it,
    and the whole predict (its wall time and GEMM share)."""
    body = []
    for r in results:
        rows, split = r["rows"], r["split"]
        total = sum(x["seconds"] for x in rows)
        per_kind = {k: sum(x["seconds"] for x in rows if x["kind"] == k) for k in KIND_ORDER}
        body.append([r["model"].split(" (")[0], r["dtype"], r["n_items"], split["chunk"], _ms(total),
                     *(_ms(per_kind[k]) if per_kind[k] else "" for k in KIND_ORDER),
                     _pct(sum(x["gemm_seconds"] for x in rows) / total), f"{split['wall_seconds']:.3f}",
                     _pct(split["gemm_share"]), f"{r['roofs']['peak_gflops']:.0f}"])
    return "\n".join(_table(["model", "dtype", "images", "chunk", "steps ms (one worker)", "conv ms",
                             "depthwise ms", "dense ms", "other ms", "GEMM share of steps",
                             "predict wall s", "GEMM share of predict", "GEMM peak GFLOP/s"], body))


def format_roofs(roofs) -> str:
    cores = [c for c in roofs["gemm_gflops"]["float32"] if c != "1"]
    header = ["GEMM peak (GFLOP/s)", "1 BLAS thread"] + [f"{c} BLAS threads" for c in cores]
    body = [[f"{'s' if d == 'float32' else 'd'}gemm ({d}, {roofs['gemm_size']}²)",
             *(f"{roofs['gemm_gflops'][d][c]:.1f}" for c in ["1"] + cores)] for d in ("float32", "float64")]
    return "\n".join(_table(header, body)) + (
        f"\n\nBandwidth: {roofs['bandwidth_gbs']:.1f} GB/s (float32 `np.add`, one thread, "
        f"{roofs['bandwidth_bytes'] / 2 ** 20:.0f} MiB in all: predict's chunk budget)")


def format_result(result, roofs_table=True) -> str:
    """Every table of one roofline, as markdown, with what was run and where."""
    m, s = result["machine"], result["split"]
    commit = m["commit"] + (" + uncommitted changes in scratch_layers/" if m["dirty"] else "")
    lines = [f"### {result['model']}, {result['dtype']}, {result['n_items']} images",
             "",
             f"{m['date']}, commit {commit}, {m['cpu']}, OpenBLAS {m['openblas_core']}; "
             f"chunks of {s['chunk']} images; steps timed with one worker and one BLAS thread "
             "(minimum over repeats), predict with its own workers.", ""]
    if roofs_table:
        lines += [format_roofs(result["roofs"]), ""]
    lines += [f"Steps (roof: {result['dtype']} GEMM peak with one BLAS thread "
              f"{result['roofs']['peak_gflops']:.1f} GFLOP/s, bandwidth "
              f"{result['roofs']['bandwidth_gbs']:.1f} GB/s):", "", format_steps(result), "",
              format_kinds(result), "", "Whole predict:", "", format_split(result)]
    return "\n".join(lines)


def roofline(name, dtype="float32", n_images=None, repeats=5, roofs=None) -> dict:
    """Load or build ``name`` (cnn, resnet50, mobilenetv2) and measure its roofline."""
    import scratch_layers

    n_images = n_images or DEFAULT_IMAGES[name]
    roofs = roofs or machine_roofs()
    if name == "cnn":
        model, x = study_cnn(n_images, dtype)
        label = f"study CNN ({Path(model.source['path']).parent.name}), CIFAR-10 test images"
    else:
        with tempfile.TemporaryDirectory() as folder:
            model = scratch_layers.load_model(application_file(APPLICATIONS[name], folder), dtype=dtype)
        x = application_images(n_images)
        label = f"{APPLICATIONS[name]} ({APPLICATION_SIZE}x{APPLICATION_SIZE}, random images)"
    return measure(model, x, label, roofs, repeats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.roofline",
                                     description="Roofline of scratch_layers' predict, as markdown.")
    parser.add_argument("model", nargs="?", default="cnn", choices=MODELS + ("all",))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--images", type=int, default=None,
                        help="images per model (default: cnn 1024, resnet50 and mobilenetv2 64)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per measurement; the fastest counts (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = parser.parse_args(argv)
    roofs = machine_roofs()
    results = []
    for i, name in enumerate(MODELS if args.model == "all" else (args.model,)):
        start = time.perf_counter()
        results.append(roofline(name, args.dtype, args.images, args.repeats, roofs))
        print(format_result(results[-1], roofs_table=i == 0), flush=True)
        print(f"\n({time.perf_counter() - start:.0f} s)\n", file=sys.stderr, flush=True)
    if len(results) > 1:
        print("\n" + format_summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
