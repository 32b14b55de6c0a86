"""Report section: the scratch_layers backward pass against Keras on each family's baseline.

Built from the records ``tests/test_backward_models.py`` attaches with
``record(request, "backward", ...)``, and the training-step benchmarks of
``tests/test_benchmarks_training.py`` (kind ``"bench_train"``):

* per baseline, a per-layer table of max |scratch - Keras| over the layer's gradients,
  against Keras' float64 twin and against the float32 model;
* a training replay of each text baseline (scratch and Keras from the same initial
  weights, same batches in the same order, Dropout off), both loss curves per step
  overlaid;
* the training-step speed ratios (scratch / Keras ``train_on_batch``).
"""
from __future__ import annotations

from ... import figures
from ..markup import esc, table
from .benchmarks import ratio


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.2e}"


def replay_figure(family: str, replay: dict) -> str:
    plt = figures._plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    steps = range(1, len(replay["keras_losses"]) + 1)
    ax.plot(steps, replay["keras_losses"], "o-", lw=2.5, alpha=0.5, label="Keras train_on_batch (float32)")
    ax.plot(steps, replay["scratch_losses"], "x--", lw=1.2, label="scratch_layers train_on_batch (float64)")
    ax.set_xlabel("step")
    ax.set_ylabel("batch loss")
    ax.set_title(f"{family}: training replay, same initial weights and batches, dropout off")
    ax.legend()
    return figures.img(fig, f"{family} training replay loss curves", width=700)


def backward_section(records: list[dict], benches: list[dict]) -> str:
    out = ['<h2 id="backward">Backward pass: gradients and training steps against Keras</h2>']
    if not records and not benches:
        return out[0] + ("<p>No backward-pass checks ran in this session (run "
                         "<code>tests/test_backward_models.py</code> with the trained baselines).</p>")
    out.append("<p><code>scratch_layers</code> computes Keras' SparseCategoricalCrossentropy and its "
               "gradient with a backward pass written from scratch (<code>Model.loss_and_gradients</code>, "
               "<code>Model.train_on_batch</code> with <code>scratch_layers.Adam</code>). Below, on each "
               "family's baseline: the largest gradient difference per layer against Keras' float64 twin "
               "(same weights, float64; the reference for exactness) and against the float32 model "
               "(Keras' own rounding), from <code>tf.GradientTape</code> on one batch of the training split "
               "(inference mode).</p>")
    for r in sorted(records, key=lambda r: r["family"]):
        out.append(f"<h3>{esc(r['family'])}: <code>{esc(r['model'])}</code>, batch of {r['batch']}</h3>")
        rows = [[esc(l["layer"]), esc(l["class"]), l["n_weights"], _num(l["max_abs_diff_float64"]),
                 _num(l["max_abs_diff_float32"]), _num(l["max_abs_grad"])] for l in r["layers"]]
        rows.append(["<b>loss</b>", "", "", _num(r["loss_diff_float64"]), _num(r["loss_diff_float32"]),
                     f"{r['loss']:.4f}"])
        out.append(table(["layer", "class", "weights", "max |Δ| vs float64 twin", "max |Δ| vs float32",
                           "max |gradient|"], rows))
        rep = r.get("replay")
        if rep:
            n = len(rep["keras_losses"])
            what = "one epoch" if rep.get("full_epoch") else f"the first {n} steps of an epoch"
            out.append(f"<p>Training replay: {what} of the training split ({rep['n_items']} texts, batch "
                       f"{rep['batch']}, fixed order, Adam lr {rep['learning_rate']:g}, Dropout off) with "
                       f"scratch_layers and with Keras from the same initial weights. Largest loss "
                       f"difference over the {n} steps: {rep['max_loss_diff']:.2e}; largest weight "
                       f"difference after the last step: {rep['max_weight_diff']:.2e} (Keras trains in "
                       f"float32, scratch in float64).</p>")
            out.append(replay_figure(r["family"], rep))
    if benches:
        out.append("<h3>Speed: one training step</h3><p><code>train_on_batch</code> on one training batch "
                   "of each baseline (<code>tests/test_benchmarks_training.py</code>); the CNN's random "
                   "augmentation layers are left out on both sides.</p>")
        rows = []
        for fam in sorted({b["family"] for b in benches}):
            by = {b["impl"]: b for b in benches if b["family"] == fam}
            k = by.get("keras")
            for impl, b in sorted(by.items()):
                rows.append([esc(fam), esc(impl), b["batch"], f"{b['median'] * 1e3:.1f} ms",
                             f"{b['mean'] * 1e3:.1f} ms", f"{b['min'] * 1e3:.1f} ms", ratio(b, k)])
        out.append(table(["family", "implementation", "batch", "median", "mean", "min",
                           "time / Keras, medians"], rows))
    return "".join(out)
