"""NusaX LSTM family: layer count, units per layer, uni- vs bidirectional."""
from ._text import text_family

FAMILY = text_family("lstm", "LSTM on NusaX-Sentiment", "lstm")
