"""NusaX SimpleRNN family: layer count, units per layer, uni- vs bidirectional.

Head: masked average pooling, which the validation split preferred over the final state
(baseline, mean validation macro-F1 over seeds 1-5; numbers in ``_text.py`` and
docs/studies.md)."""
from ._text import text_family

FAMILY = text_family("rnn", "SimpleRNN on NusaX-Sentiment", "simple_rnn", head="pooling")
