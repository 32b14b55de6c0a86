"""NusaX SimpleRNN family: layer count, units per layer, uni- vs bidirectional."""
from ._text import text_family

FAMILY = text_family("rnn", "SimpleRNN on NusaX-Sentiment", "simple_rnn")
