"""Speed: time ratios against Keras, the answer's speed summary and the Benchmarks section."""
from __future__ import annotations

from ..markup import esc, table


DEFAULT_BENCH_INPUTS = "test split"


def _bench_groups(benches: list[dict]) -> list[tuple[tuple[str, str], dict]]:
    """[((family, inputs), {impl: record})], one group per ratio baseline: the study
    families first, then the ``keras.applications`` models (``application: true``,
    ``family`` holding the model's name), each part sorted."""
    groups: dict = {}
    for b in benches:
        key = (bool(b.get("application")), b["family"], b.get("inputs", DEFAULT_BENCH_INPUTS))
        groups.setdefault(key, {})[b["impl"]] = b
    return [(key[1:], by) for key, by in sorted(groups.items())]


def _what(fam: str, inputs: str, by: dict) -> str:
    """A forward group's row title in the speed summary."""
    source = " (keras.applications)" if any(b.get("application") for b in by.values()) else ""
    return f"{esc(fam)}{source}: forward pass, {esc(inputs)}"


def seconds(t: float) -> str:
    return f"{t:.3g} s"


def ratio(b: dict, keras: dict | None) -> str:
    """time(b) / time(Keras), medians of their rounds (one slow round, common on a shared
    machine, moves a mean of 3-5 rounds by 10-30%); "n/a" without Keras."""
    return f"{b['median'] / keras['median']:.2f}×" if keras else "n/a"


def blas_note(blas: dict | None) -> str:
    """One sentence on the BLAS kernels scratch_layers' matmuls ran on (Keras' oneDNN
    picks its own): the ratios depend on them."""
    if not blas or not blas.get("openblas_core"):
        return ""
    forced = blas.get("OPENBLAS_CORETYPE")
    how = (f"forced by <code>OPENBLAS_CORETYPE={esc(forced)}</code>; an older core than the CPU "
           "supports makes every matmul slower, see the README's <i>Speed</i>" if forced
           else "OpenBLAS's own choice for this CPU")
    return f" NumPy's OpenBLAS ran its <b>{esc(blas['openblas_core'])}</b> kernels ({how})."


def speed_summary(benches: list[dict], train_benches: list[dict] = (), blas: dict | None = None) -> str:
    """A small table of time ratios against Keras: forward pass per input kind (study
    families, then the keras.applications graphs), and one training step, for the float64
    (default) and float32 scratch paths, and ONNX Runtime (the exported Keras model) where
    it ran; beside them Keras' own median time, what the ratios divide by."""
    groups = [(_what(fam, inputs, by), by) for (fam, inputs), by in _bench_groups(benches)]
    groups += [(f"{fam}: one training step (train_on_batch)", by)
               for (fam, _), by in _bench_groups(list(train_benches))]
    impls = ["scratch", "scratch_float32"] + (["onnxruntime"] if any("onnxruntime" in by for _, by in groups) else [])
    rows = [[what, seconds(by["keras"]["median"])]
            + [f"<b>{ratio(by[impl], by['keras'])}</b>" if impl in by else "n/a" for impl in impls]
            for what, by in groups if "keras" in by]
    if not rows:
        return "<p>Speed: no benchmark ran in this session (<code>pytest -m bench</code>).</p>"
    head = ["what", "Keras median", "scratch float64 (exact reference)", "scratch float32"]
    if "onnxruntime" in impls:
        head.append("ONNX Runtime (exported Keras model)")
    return ("<p><b>Speed.</b> Time of each implementation / time of Keras (<code>predict</code>, or "
            "<code>train_on_batch</code> for a training step), medians of "
            "rounds measured side by side in this run (pytest-benchmark; <b>below 1 means faster than "
            'Keras</b>; details under <a href="#benchmarks">Benchmarks</a>).' + blas_note(blas) + '</p>'
            + table(head, rows))


def benchmark_section(benches: list[dict], blas: dict | None = None) -> str:
    out = ['<h2 id="benchmarks">Benchmarks: forward pass</h2>']
    if not benches:
        return out[0] + "<p>No benchmarks ran in this session (select them with <code>-m bench</code>).</p>"
    what = "Each study family's baseline over its whole test split"
    if any(b.get("application") for b in benches):
        what += (", then the <code>keras.applications</code> graphs (<code>weights=None</code>, perturbed "
                 "weights) on random images (<code>tests/test_benchmarks_applications.py</code>)")
    out.append("<p>" + what + "." + blas_note(blas) + "</p>")
    rows = []
    for (fam, inputs), by in _bench_groups(benches):
        k = by.get("keras")
        for impl, b in sorted(by.items()):
            rows.append([fam, esc(inputs), esc(impl), esc(b["model"]), b["n_items"],
                         f"{b['median']:.3f} s", f"{b['mean']:.3f} s", f"{b['min']:.3f} s",
                         ratio(b, k), b.get("rounds", "")])
    out.append(table(["family or model", "inputs", "implementation", "model", "items", "median", "mean", "min",
                      "time / Keras, medians (below 1: faster)", "rounds"], rows))
    return "".join(out)
