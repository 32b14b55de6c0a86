"""NusaX SimpleRNN family: layer count, units per layer, uni- vs bidirectional."""
from __future__ import annotations

from ..studies import Family, Study
from ._text import BASELINE, TEXT_RECIPE, build_text_model, load_data, text_studies

FAMILY = Family(
    name="rnn",
    title="SimpleRNN on NusaX-Sentiment",
    baseline=BASELINE,
    studies=text_studies(Study),
    recipe=TEXT_RECIPE,
    load_data=load_data,
    build_model=lambda config, splits: build_text_model(config, splits, "simple_rnn"),
)
