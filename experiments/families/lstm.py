"""NusaX LSTM family: layer count, units per layer, uni- vs bidirectional.

Head: the final state, which the validation split preferred over masked average pooling
(baseline, mean validation macro-F1 over seeds 1-5; numbers in ``_text.py`` and
docs/studies.md)."""
from ._text import text_family

FAMILY = text_family("lstm", "LSTM on NusaX-Sentiment", "lstm", head="final_state")
