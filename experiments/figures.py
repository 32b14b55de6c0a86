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
