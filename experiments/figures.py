"""Report figures (matplotlib, Agg), returned as self-contained ``<img>`` tags."""
from __future__ import annotations

import base64
import html
import io

import numpy as np

DPI = 160  # stays sharp on high-DPI screens; the <img> is scaled down by CSS


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


CSS_PX_PER_INCH = 96  # a figure is shown at its natural size: 1 pt of font = 96/72 px on screen


def _png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big")  # IHDR width


def img(fig, alt: str, width: int | None = None) -> str:
    """The figure as an inline PNG, shown at its natural size (``width`` CSS px when given),
    never wider than its column: a 10 pt label is about 13 px on a wide screen."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    png = buf.getvalue()
    width = width or round(_png_width(png) * CSS_PX_PER_INCH / DPI)
    data = base64.b64encode(png).decode()
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" '
            f'style="width:{width}px;max-width:100%">')


def _spans_decades(curves: list[list[float]]) -> bool:
    vals = np.concatenate([np.asarray(c, float) for c in curves if len(c)]) if curves else np.array([])
    vals = vals[vals > 0]
    return bool(vals.size and vals.max() / vals.min() > 10)


PANELS = (("loss", "training loss"), ("val_loss", "validation loss"), ("val_accuracy", "validation accuracy"))
_MONITOR_NOTE = " (early stopping monitors this)"


def loss_figure(title: str, variants: list[dict], monitor: str = "val_loss") -> str:
    """Training loss, validation loss and validation accuracy per epoch, each on its own
    axis.  Per variant (one colour): the mean over seeds with a min-max band while every
    seed is still training; after the first seed stops, each seed's own curve as a thin
    line (never a mean of the survivors); a dot on every run at the epoch whose weights
    early stopping restored.  The panel of the monitored metric says so."""
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = [(k, t) for k, t in PANELS if any((r.get("history") or {}).get(k) for v in variants for r in v["runs"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.1 * len(panels), 3.6), squeeze=False)
    axes = axes[0]
    handles, any_thin = [], False
    for i, v in enumerate(variants):
        runs = [r for r in v["runs"] if (r.get("history") or {}).get("loss")]
        if not runs:
            continue
        colour = f"C{i}"
        common = min(len(r["history"]["loss"]) for r in runs)
        for ax, (key, _) in zip(axes, panels):
            curves = [np.asarray(r["history"].get(key) or [], float) for r in runs]
            if not all(len(c) for c in curves):
                continue
            block = np.stack([c[:common] for c in curves])
            epochs = np.arange(1, common + 1)
            ax.plot(epochs, block.mean(axis=0), color=colour, lw=2)
            if len(runs) > 1:
                ax.fill_between(epochs, block.min(axis=0), block.max(axis=0), color=colour, alpha=0.15, lw=0)
            for c in curves:
                if len(c) > common:
                    any_thin = True
                    ax.plot(np.arange(common, len(c) + 1), c[common - 1:], color=colour, lw=0.8, alpha=0.7)
            for r, c in zip(runs, curves):
                b = r.get("best_epoch")
                if b and 0 < b <= len(c):
                    ax.plot([b], [c[b - 1]], "o", ms=5, mfc=colour, mec="black", mew=0.7, zorder=5)
        handles.append(Line2D([], [], color=colour, lw=2, label=f"{v['label']} (n={len(runs)})"))
    handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec="black", label="restored epoch (one dot per seed)"))
    if any_thin:
        handles.append(Line2D([], [], color="grey", lw=0.8, label="single seeds, after the first seed stopped"))
    for ax, (key, name) in zip(axes, panels):
        ax.set_title(name + (_MONITOR_NOTE if key == monitor else ""), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        curves = [r["history"][key] for v in variants for r in v["runs"] if (r.get("history") or {}).get(key)]
        if key != "val_accuracy" and _spans_decades(curves):
            ax.set_yscale("log")
    axes[0].set_ylabel("cross-entropy")
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.05 * ((len(handles) - 1) // 3)), fontsize=10)
    fig.suptitle(title + ": mean over seeds (band: min–max) while all seeds train", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(handles) - 1) // 3), 1, 1))
    return img(fig, f"{title}: training and validation curves")


def f1_dot_figure(title: str, variants: list[dict], selected: str | None = None,
                  reference: dict | None = None) -> str:
    """Test macro-F1 per variant: one dot per seed, the mean with its 95% t-interval over
    seeds, the validation-selected variant marked; the best reference baseline (chosen on
    validation) as a dashed line when it is within reach of the axis, else named."""
    plt = _plt()
    from .stats import mean_interval

    ran = [v for v in variants if v["runs"]]
    fig, ax = plt.subplots(figsize=(7.2, 0.55 * len(ran) + 1.3))
    rng = np.random.default_rng(0)
    allv = []
    for y, v in enumerate(ran):
        vals = np.array([r["keras_f1"] for r in v["runs"]], float)
        allv += list(vals)
        ax.plot(vals, y + rng.uniform(-0.12, 0.12, len(vals)), "o", ms=5, color="C0", alpha=0.7)
        ci = mean_interval(vals)
        if ci:
            ax.errorbar([vals.mean()], [y], xerr=[[vals.mean() - ci[0]], [ci[1] - vals.mean()]], fmt="none",
                        ecolor="black", elinewidth=1.5, capsize=4, zorder=4)
        ax.plot([vals.mean()], [y], "D", ms=7, color="black", zorder=5)
    labels = [("★ " if v["variant"] == selected else "") + v["label"] for v in ran]
    ax.set_yticks(range(len(ran)), labels, fontsize=10)
    for tick, v in zip(ax.get_yticklabels(), ran):
        if v["variant"] == selected:
            tick.set_fontweight("bold")
    ax.set_ylim(-0.6, len(ran) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("test macro-F1 (dots: seeds; diamond and bar: mean and 95% interval over seeds)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    note = "★ selected on validation"
    if reference and allv:
        lo, hi = min(allv), max(allv)
        x = reference["test_macro_f1"]
        if lo - 0.08 <= x <= hi + 0.08:
            ax.axvline(x, ls="--", color="C3", lw=1.2)
            note += f"; dashed: {reference['name']} {x:.3f}"
        else:
            note += f"; {reference['name']}: {x:.3f} (off this scale)"
    ax.set_title(f"{title}\n{note}", fontsize=10)
    fig.tight_layout()
    return img(fig, f"{title}: test macro-F1 per seed")


def confusion_figure(title: str, matrix: list, class_names) -> str:
    plt = _plt()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.6 + 0.6 * len(m), 1.4 + 0.55 * len(m)))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=9,
                color="white" if v > m.max() / 2 else "black")
    ax.set_xticks(range(len(m)), class_names, rotation=45, ha="right", fontsize=10)
    ax.set_yticks(range(len(m)), class_names, fontsize=10)
    ax.set_xlabel("predicted", fontsize=10)
    ax.set_ylabel("true", fontsize=10)
    ax.set_title(title, fontsize=10)
    return img(fig, title)


def image_grid(title: str, images: np.ndarray, captions: list[str]) -> str:
    """Small images (N, H, W, 3) in [0, 1] with a caption under each."""
    plt = _plt()
    n = max(len(images), 1)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, im, cap in zip(axes.ravel(), images, captions):
        ax.imshow(np.clip(im, 0, 1), interpolation="nearest")
        ax.set_title(cap, fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return img(fig, title)


def _panel_title(fig, ax, title: str) -> None:
    """A panel title flush with the figure's left edge (above the tick labels), so a long
    title does not widen the figure past its axes."""
    ax.annotate(title, xy=(0.005, 1.0), xycoords=(fig.transFigure, ax.transAxes), xytext=(0, 5),
                textcoords="offset points", ha="left", va="bottom", fontsize=10)


def difference_label(b: str, a: str) -> str:
    """"b − a" with the words both labels share at the start or the end said once:
    ("3 conv layers", "2 conv layers") -> "3 − 2 conv layers"; ("filters 32-64-128",
    "filters 16-32-64") -> "filters 32-64-128 − 16-32-64"; labels without shared words stay
    whole ("2 layers − 1 layer")."""
    wb, wa = b.split(), a.split()
    if wb == wa:
        return f"{b} − {a}"
    head = 0
    while head < min(len(wa), len(wb)) - 1 and wa[head] == wb[head]:
        head += 1
    tail = 0
    while tail < min(len(wa), len(wb)) - 1 - head and wa[-1 - tail] == wb[-1 - tail]:
        tail += 1
    if not head and not tail:
        return f"{b} − {a}"
    pre, post = " ".join(wb[:head]), " ".join(wb[len(wb) - tail:])
    mid = f"{' '.join(wb[head:len(wb) - tail])} − {' '.join(wa[head:len(wa) - tail])}"
    return " ".join(x for x in (pre, mid, post) if x)


def _forest_rows(studies: list[dict], labels: dict) -> list[dict]:
    """One row per comparison of ``studies``, oriented later value minus earlier value (the
    studies' declared order), so "3 layers − 1 layer" reads as what adding layers does:
    the difference b − a of mean test macro-F1 and its interval, negated from a − b."""
    rows = []
    for k, st in enumerate(studies):
        for c in st["comparisons"]:
            lo, hi = c.get("ci_low"), c.get("ci_high")
            rows.append({"label": difference_label(labels.get(c["b"], c["b"]), labels.get(c["a"], c["a"])),
                         "diff": -c["mean_diff"], "low": None if hi is None else -hi,
                         "high": None if lo is None else -lo, "effect": bool(c["significant"]),
                         "group": k})
    return rows


def forest_figure(panels: list[tuple[str, list[dict]]], labels: dict) -> str:
    """Every study's comparisons as a forest plot, one panel per family (``panels``: (title,
    that family's studies)): per comparison the difference of mean test macro-F1 over seeds
    (later value − earlier value) with its 95% Welch interval, filled when it is an effect
    (Holm-adjusted p < 0.05 within its study), open when not; the zero line; thin rules
    between studies.  ``labels`` maps variant ids to their labels."""
    plt = _plt()
    from matplotlib.lines import Line2D

    rows = [_forest_rows(studies, labels) for _, studies in panels]
    heights = [max(len(r), 1) + 1.2 for r in rows]
    fig, axes = plt.subplots(len(panels), 1, figsize=(6.0, 0.21 * sum(heights) + 0.9), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (title, _), rs in zip(axes[:, 0], panels, rows):
        for y, r in enumerate(rs):
            colour = "#1f5fa8" if r["effect"] else "#777777"
            if r["low"] is not None:
                ax.plot([r["low"], r["high"]], [y, y], color=colour, lw=1.6, solid_capstyle="butt")
            ax.plot([r["diff"]], [y], "o", ms=6, mec=colour, mew=1.4,
                    mfc=colour if r["effect"] else "white", zorder=5)
        for y in range(1, len(rs)):
            if rs[y]["group"] != rs[y - 1]["group"]:
                ax.axhline(y - 0.5, color="#cccccc", lw=0.8)
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(range(len(rs)), [r["label"] for r in rs], fontsize=9)
        ax.set_ylim(len(rs) - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=9)
        n_eff = sum(r["effect"] for r in rs)
        _panel_title(fig, ax, f"{title}: {n_eff} of {len(rs)} comparisons are effects")
    axes[-1, 0].set_xlabel("difference in test macro-F1 (mean over seeds) with 95% interval", fontsize=9)
    handles = [Line2D([], [], color="#1f5fa8", marker="o", mfc="#1f5fa8", lw=1.6,
                      label="effect: Holm-adjusted p < 0.05"),
               Line2D([], [], color="#777777", marker="o", mfc="white", lw=1.6, label="not an effect")]
    fig.legend(handles=handles, loc="upper center", ncol=2, frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return img(fig, "Forest plot: every study's comparisons, difference in test macro-F1 with 95% "
                    "interval, effects after Holm correction filled, one panel per family")


WINDOW = 0.15  # half-width (macro-F1) of the points a panel zooms onto around the selected mean


def _window(sel: dict | None, values: list[float]) -> tuple[float, float]:
    """A panel's x range: the selected model's interval and every reference within
    ``WINDOW`` of its mean, padded; references further away are drawn at the edge."""
    centre = sel["f1_mean"] if sel else float(np.median(values))
    near = [x for x in values if abs(x - centre) <= WINDOW] + [centre]
    if sel and sel.get("f1_ci95"):
        near += list(sel["f1_ci95"])
    lo, hi = min(near), max(near)
    pad = max(0.02, 0.12 * (hi - lo))
    return max(0.0, lo - pad), min(1.0, hi + pad)


def selected_vs_references_figure(panels: list[tuple[str, dict | None, list[dict]]]) -> str:
    """Per family (``panels``: (title, selected configuration, reference models)): the
    validation-selected configuration's mean test macro-F1 over seeds with its 95%
    t-interval (diamond and bar), and each reference baseline's test macro-F1 (squares: one
    deterministic fit each, so no seed interval), every value written beside its point.
    Each panel zooms onto the selected model and the references near it (``_window``); a
    reference off that range is a triangle at the edge pointing to where it lies."""
    plt = _plt()

    heights = [1 + len(refs) + 1.2 for _, _, refs in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(4.3, 0.21 * sum(heights) + 0.9), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (title, sel, refs) in zip(axes[:, 0], panels):
        lo, hi = _window(sel, [m["test_macro_f1"] for m in refs])
        names = []
        if sel:
            ci = sel.get("f1_ci95")
            if ci:
                ax.plot(ci, [0, 0], color="black", lw=1.8)
            ax.plot([sel["f1_mean"]], [0], "D", ms=7, color="black", zorder=5)
            right = ci[1] if ci else sel["f1_mean"]
            ax.annotate(f"{sel['f1_mean']:.3f}", (right, 0), xytext=(5, 0),
                        textcoords="offset points", ha="left", va="center", fontsize=8)
            names.append(f"selected (n={sel['n_runs']})")
        else:
            names.append("selected: not trained")
        for y, m in enumerate(refs, start=1):
            x = m["test_macro_f1"]
            if lo <= x <= hi:
                ax.plot([x], [y], "s", ms=6, color="#c0392b", zorder=5)
                ax.annotate(f"{x:.3f}", (x, y), xytext=(6, 0), textcoords="offset points",
                            ha="left", va="center", fontsize=8)
            else:  # off the zoomed range: a triangle at the edge, pointing to it
                edge, marker, ha, dx = (lo, "<", "left", 6) if x < lo else (hi, ">", "right", -6)
                ax.plot([edge], [y], marker, ms=7, color="#c0392b", clip_on=False, zorder=5)
                ax.annotate(f"{x:.3f}", (edge, y), xytext=(dx, 0), textcoords="offset points",
                            ha=ha, va="center", fontsize=8)
            names.append(m["name"])
        ax.set_yticks(range(len(names)), names, fontsize=9)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlim(lo, hi)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=9)
        _panel_title(fig, ax, title)
    axes[-1, 0].set_xlabel("test macro-F1 (bar: 95% interval over seeds)", fontsize=9)
    fig.tight_layout()
    return img(fig, "Selected configurations (mean test macro-F1 with 95% interval over seeds) "
                    "against the reference baselines, per family")
