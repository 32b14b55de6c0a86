"""The conformance matrix: every implementation under test (``pytest --backend``) against
Keras, per case group, and scratch_layers' own reach (the graph cases and
``keras.applications``) with their worst differences."""
from __future__ import annotations

from ...backends import GROUPS_ORDER
from ..markup import esc, table

GROUP_TITLES = {"cnn": "CNN study models", "rnn": "SimpleRNN study models", "lstm": "LSTM study models",
                "graph": "graph cases", "applications": "keras.applications",
                "backward": "backward: loss_and_gradients (family baselines)"}


def _e(x) -> str:
    return "n/a" if x is None else f"{x:.1e}"


def _cell(row: dict | None) -> str:
    if row is None:
        return "–"
    counts = [f"{row['passed']} pass"]
    if row["refused"]:
        counts.append(f"{row['refused']} refused")
    if row["wrong"]:
        counts.append(f"<b>{row['wrong']} wrong</b>")
    worst = (f"<br>worst Δ: twin {_e(row['worst_vs_twin'])}, Keras f32 {_e(row['worst_vs_keras'])}"
             if row["passed"] + row["wrong"] else "")
    ratio = f"<br>forward {row['forward_ratio']:.2f}× Keras" if row.get("forward_ratio") else ""
    return ", ".join(counts) + worst + ratio


def conformance_section(rows: list[dict]) -> str:
    if not rows:
        return ""
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    present = {r["group"] for r in rows}
    groups = [g for g in GROUPS_ORDER if g in present] + sorted(present - set(GROUPS_ORDER))
    by = {(r["backend"], r["group"]): r for r in rows}
    precision = {b: next((r["precision"] for r in rows if r["backend"] == b and r["precision"]), None)
                 for b in backends}
    out = ['<h2 id="conformance">Conformance matrix: implementations under test against Keras</h2>',
           "<p>Each row is one implementation run through the same verification tests "
           "(<code>pytest --backend NAME</code>, see <code>scratch_layers/verify/backends.py</code>): "
           "the study models on their whole test splits, the graph cases and the "
           "<code>keras.applications</code> models. A cell counts the cases that <i>pass</i> "
           "(a float64 backend equals Keras' float64 twin within 1e-9 relative to the output scale; "
           "a float32 one equals float32 Keras within atol + rtol 1e-5), that the backend "
           "<i>refused</i> (it raised <code>NotImplementedError</code> or its declared error), and "
           "that are <i>wrong</i>; then the worst max|Δ| against the twin and against float32 Keras "
           "over the cases it ran, and its forward time over Keras' where both were timed. The "
           "<i>backward</i> column checks <code>loss_and_gradients(x, y)</code> on one training batch "
           "of each family's baseline against Keras' <code>tf.GradientTape</code> (float64 twin: atol "
           "1e-9 + rtol 1e-7; float32 Keras: atol + rtol 1e-5); a backend without it is refused there.</p>",
           table(["backend", "precision"] + [GROUP_TITLES.get(g, g) for g in groups],
                 [[f"<code>{esc(b)}</code>", precision[b] or "n/a"] + [_cell(by.get((b, g))) for g in groups]
                  for b in backends])]
    wrong = [r for r in rows if r.get("first_wrong")]
    if wrong:
        out.append("<p class=warn>Wrong: " + "; ".join(
            f"<code>{esc(r['backend'])}</code> on {esc(r['group'])}: first at "
            f"<code>{esc(r['first_wrong']['case'])}</code>"
            + (f", {'weight' if r['group'] == 'backward' else 'node'} <code>{esc(r['first_wrong']['node'])}</code>"
               f" (max|Δ| {_e(r['first_wrong']['node_diff'])})"
               if r["first_wrong"].get("node") else "")
            for r in wrong) + "</p>")
    refusals = [(r["backend"], r["group"], m) for r in rows for m in r.get("refusals", [])]
    if refusals:
        out.append("<details><summary>Why cases were refused (first reasons per cell)</summary><ul>"
                   + "".join(f"<li><code>{esc(b)}</code>, {esc(g)}: {esc(m)}</li>" for b, g, m in refusals)
                   + "</ul></details>")
    out.append(reach_section(rows))
    return "".join(out)


def reach_section(rows: list[dict]) -> str:
    """scratch_layers' own reach: each graph case and application with its worst differences."""
    own = [r for r in rows if r["backend"] == "scratch_layers" and r["group"] in ("graph", "applications")]
    if not own:
        return ""
    out = ['<h3 id="reach">scratch_layers\' reach beyond the study models</h3>',
           "<p>Graph models (skip connections, several inputs and outputs, shared layers, nested models, "
           "operation nodes, a transformer, an encoder-decoder) and <code>keras.applications</code> "
           "models with random weights, forward pass against Keras (details in "
           "<code>scratch_layers/README.md</code>).</p>"]
    for r in own:
        out.append(f"<h4>{esc(GROUP_TITLES[r['group']])}: {r['passed']} of {r['n_cases']} equal Keras</h4>")
        out.append(table(["case", "result", "max|Δ| vs float64 twin", "max|Δ| vs float32 Keras"],
                         [[f"<code>{esc(c['case'])}</code>", c["status"], _e(c["max_abs_diff_float64"]),
                           _e(c["max_abs_diff"])] for c in r["cases"]]))
    return "".join(out)
