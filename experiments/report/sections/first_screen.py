"""The report's first screen: one figure before any prose.

Left, every study's comparisons as a forest plot (one panel per family: the difference in
test macro-F1 with its 95% Welch interval over seeds, Holm effects filled, the zero line);
beside it, each family's validation-selected configuration against the reference
baselines.  Beneath, two short sentences and one line per family (selected model against
the reference that validation would pick).  The two images sit side by side on a wide
screen and stack on a narrow one (a wrapping flex row)."""
from __future__ import annotations

from ... import figures
from ...references import best
from ..markup import esc


def _short_verdict(title: str, sel: dict | None, refs: dict | None) -> str:
    """"LSTM: selected 0.718 [0.696, 0.741]; best reference 0.767, above its interval."""
    ref = best(refs)
    if not sel:
        return f"{title}: not trained yet."
    ci = sel.get("f1_ci95")
    text = f"{title}: selected {sel['f1_mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    if ref is None:
        return text + "."
    x = ref["test_macro_f1"]
    where = ("" if not ci else ", above that interval" if x > ci[1]
             else ", below that interval" if x < ci[0] else ", inside that interval")
    return text + f"; {ref['name']} {x:.3f}{where}."


def first_screen(doc: dict, family_titles: dict) -> str:
    """The figure (forest plot beside selected-vs-references) and its short caption, or
    nothing when no study has a comparison yet."""
    fams = [f for f in doc["selected"] if any(s["family"] == f for s in doc["studies"])]
    studies = {f: [s for s in doc["studies"] if s["family"] == f and s["comparisons"]] for f in fams}
    fams = [f for f in fams if studies[f]]
    if not fams:
        return ""
    labels = {v["variant"]: v["label"] for v in doc["variants"]}
    refs = doc.get("references") or {}
    titles = [family_titles.get(f, f) for f in fams]
    forest = figures.forest_figure([(t, studies[f]) for t, f in zip(titles, fams)], labels)
    versus = figures.selected_vs_references_figure(
        [(t, doc["selected"].get(f), ((refs.get(f) or {}).get("models") or [])) for t, f in zip(titles, fams)])
    n = sum(len(s["comparisons"]) for f in fams for s in studies[f])
    n_eff = sum(c["significant"] for f in fams for s in studies[f] for c in s["comparisons"])
    lines = [f"<b>Forest plot:</b> all {n} comparisons of the studies, later value minus earlier; "
             f"{n_eff} are effects (filled: Holm-adjusted p &lt; 0.05 within the study). "
             "Bars: 95% interval over seeds.",
             "<b>Selected vs references:</b> each family's configuration chosen on validation "
             "(diamond: mean test macro-F1, bar: 95% interval over seeds) against reference "
             "baselines on the same test split (squares: one fit each; a triangle points to a "
             "value off the scale)."]
    verdicts = [esc(_short_verdict(t, doc["selected"].get(f), refs.get(f))) for t, f in zip(titles, fams)]
    return ('<div class="first-screen" id="first-screen">'
            '<div style="display:flex;flex-wrap:wrap;gap:8px 16px;align-items:flex-start">'
            f'<div style="flex:0 1 auto;min-width:0">{forest}</div>'
            f'<div style="flex:0 1 auto;min-width:0">{versus}</div></div>'
            + "".join(f'<p style="margin:4px 0">{x}</p>' for x in lines)
            + '<ul style="margin:4px 0">' + "".join(f"<li>{x}</li>" for x in verdicts) + "</ul></div>")
