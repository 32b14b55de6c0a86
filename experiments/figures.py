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


def img(fig, alt: str, width: int = 900) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" '
            f'style="width:{width}px;max-width:100%">')


def _spans_decades(curves: list[list[float]]) -> bool:
    vals = np.concatenate([np.asarray(c, float) for c in curves if len(c)]) if curves else np.array([])
    vals = vals[vals > 0]
    return bool(vals.size and vals.max() / vals.min() > 10)


def loss_figure(title: str, variants: list[dict]) -> str:
    """Training (left) and validation (right) loss per epoch: mean over seeds as a line,
    min-max over seeds as a band, one colour per variant, one shared legend."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    handles = []
    for i, v in enumerate(variants):
        h = v["history"]
        if not h.get("loss"):
            continue
        for ax, key in zip(axes, ("loss", "val_loss")):
            epochs = np.arange(1, len(h[key]) + 1)
            line, = ax.plot(epochs, h[key], color=f"C{i}", lw=1.8,
                            label=f"{v['label']} (n={len(v['runs'])})")
            ax.fill_between(epochs, h[key + "_min"], h[key + "_max"], color=f"C{i}", alpha=0.15, lw=0)
        handles.append(line)
    curves = [v["history"][k] for v in variants for k in ("loss", "val_loss") if v["history"].get(k)]
    for ax, which in zip(axes, ("training", "validation")):
        ax.set(title=f"{which} loss", xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        if _spans_decades(curves):
            ax.set_yscale("log")
    axes[0].set_ylabel("cross-entropy (mean over seeds; band: min–max)")
    fig.legend(handles=handles, loc="lower center", ncol=max(len(handles), 1), frameon=False,
               bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return img(fig, f"{title}: loss curves")


def confusion_figure(title: str, matrix: list, class_names) -> str:
    plt = _plt()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(m), 1.0 + 0.5 * len(m)))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > m.max() / 2 else "black")
    ax.set_xticks(range(len(m)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(m)), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize=9)
    return img(fig, title, width=120 + 40 * len(m))


def image_grid(title: str, images: np.ndarray, captions: list[str]) -> str:
    """Small images (N, H, W, 3) in [0, 1] with a caption under each."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(1.5 * max(n, 1), 2.0))
    for ax, im, cap in zip(np.atleast_1d(axes), images, captions):
        ax.imshow(np.clip(im, 0, 1), interpolation="nearest")
        ax.set_title(cap, fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return img(fig, title, width=min(900, 130 * max(n, 1)))
