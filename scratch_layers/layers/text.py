r"""TextVectorization (output_mode="int") re-implemented without TensorFlow.

Pipeline, as ``keras/src/layers/preprocessing/text_vectorization.py``:
1. standardize: ``tf.strings.lower`` (ASCII-only: only A-Z are lowercased) and/or
   removal of the characters matched by Keras' punctuation regex
   ``[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']``;
2. split: "whitespace" = ``tf.strings.split`` (ASCII whitespace
   `` \t\n\r\v\f``, runs collapse, no empty tokens), "character" = Unicode
   code points, or None (whole string is one token);
3. lookup: index in the vocabulary (0 = padding/mask token "", 1 = OOV "[UNK]");
4. truncate / right-pad with 0 to ``output_sequence_length``.
"""
import re

import numpy as np

from ..errors import InputError, ModelFileError
from .layer import Layer

# The longest ``output_sequence_length`` accepted from a model file. Each text becomes a
# row of that many int64 ids (and the layers after it hold that many timesteps per
# sample), so a hostile config asking for 10**9 would allocate 8 GB per text; real
# models use at most a few thousand tokens.
MAX_OUTPUT_SEQUENCE_LENGTH = 100_000
# The most tokens a vocabulary (TextVectorization, StringLookup, IntegerLookup) may hold,
# checked before the token list is built: real vocabularies hold at most a few million
# (fastText's English one 2 million); each token costs ~100 bytes of Python objects.
MAX_VOCABULARY_TOKENS = 4_000_000
_LINE_BREAKS = ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
STRIP_REGEX = re.compile(r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']')
_WS_SPLIT = re.compile(r"[ \t\n\r\x0b\x0c]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def standardize(text, mode):
    if mode in ("lower", "lower_and_strip_punctuation"):
        text = text.translate(_ASCII_LOWER)
    if mode in ("strip_punctuation", "lower_and_strip_punctuation"):
        text = STRIP_REGEX.sub("", text)
    return text


def split(text, mode):
    if mode == "whitespace":
        return [t for t in _WS_SPLIT.split(text) if t]
    if mode == "character":
        return list(_replace_invalid(text))
    return [text]


def decode_input(raw):
    """Bytes input as TF sees it: invalid UTF-8 bytes are kept (as lone surrogates,
    ``surrogateescape``), so they are never lowercased, never match the ASCII
    punctuation regex or whitespace, and a token holding one is out of vocabulary."""
    return raw.decode("utf-8", "surrogateescape")


def _replace_invalid(text):
    """``tf.strings.unicode_split(errors="replace")``: each maximal invalid UTF-8
    subsequence becomes one U+FFFD, the same rule as Python's ``errors="replace"``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def parse_vocabulary_file(data, where="vocabulary"):
    """Same parsing as Keras' IndexLookup.load_assets: splitlines, drop trailing empties.
    The lines are counted before the list is made: more than MAX_VOCABULARY_TOKENS is a
    ModelFileError (a 256 MiB file of one-character lines would be 128 million strings)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{where} is not valid UTF-8 ({e}); the file is corrupt") from None
    breaks = sum(text.count(c) for c in _LINE_BREAKS) - text.count("\r\n")
    if breaks > MAX_VOCABULARY_TOKENS:
        raise ModelFileError(f"{where} has {breaks:,} lines, over the cap of {MAX_VOCABULARY_TOKENS:,} "
                             "tokens (scratch_layers.layers.text.MAX_VOCABULARY_TOKENS); the file is "
                             "hostile or corrupt")
    lines = text.splitlines()
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def configured_vocabulary(layer, config, asset):
    """The vocabulary as Keras' ``set_vocabulary`` gets it: the config's list, else the
    model file's asset (already parsed, or None). A file path names the saving machine
    (UnsupportedLayerError); no vocabulary at all, one that is not a list, or one of more
    than MAX_VOCABULARY_TOKENS tokens is a ModelFileError."""
    where = f"{layer.class_name} layer '{layer.name}'"
    vocab = config.get("vocabulary")
    if isinstance(vocab, str):
        raise layer.unsupported("vocabulary", vocab, "a vocabulary *file path* refers to the "
                                "saving machine; pass the tokens, or adapt() and save the model")
    if vocab is None:
        vocab = asset
    if vocab is None:
        raise ModelFileError(f"{where}: no vocabulary (neither in the config nor in the "
                             "model file's assets/ folder). Legacy .h5 files do not store "
                             "adapted vocabularies: save the model as .keras.")
    if not isinstance(vocab, (list, tuple)):
        raise ModelFileError(f"{where}: vocabulary is not a list; the file is corrupt")
    if len(vocab) > MAX_VOCABULARY_TOKENS:
        raise ModelFileError(f"{where}: a vocabulary of {len(vocab):,} tokens is over the "
                             f"cap of {MAX_VOCABULARY_TOKENS:,} (scratch_layers.layers.text."
                             "MAX_VOCABULARY_TOKENS); the file is hostile or corrupt")
    return vocab


class TextVectorization(Layer):
    """Strings (N,) or (N, 1) -> int64 token ids (N, output_sequence_length).

    Only output_mode="int", ngrams=None, ragged=False and the built-in
    standardize/split modes are supported; anything else raises
    UnsupportedLayerError naming the option."""

    input_kind = "string"
    reads_vocabulary = True  # the loader passes the vocabulary asset to the constructor

    @property
    def pads_each_batch(self):
        """Without output_sequence_length, each batch is padded to its own longest text."""
        return self.output_sequence_length is None

    def __init__(self, config, weights, class_name=None, vocabulary=None):
        super().__init__(config, weights, class_name)
        self.standardize = self.require(
            "standardize", ("lower_and_strip_punctuation", "lower", "strip_punctuation", None),
            "lower_and_strip_punctuation")
        self.split = self.require("split", ("whitespace", "character", None), "whitespace")
        self.require("ngrams", (None,), None)
        self.require("output_mode", ("int",), "int")
        self.require("ragged", (False,), False)
        self.require("sparse", (False,), False)
        self.output_sequence_length = self._sequence_length(config.get("output_sequence_length"))
        vocab = [str(v) for v in configured_vocabulary(self, config, vocabulary)]
        special = ["", "[UNK]"]  # mask token, OOV token (num_oov_indices=1)
        if vocab[:2] == special:
            vocab = vocab[2:]
        elif vocab[:1] == ["[UNK]"]:
            vocab = vocab[1:]
        self.vocabulary = special + vocab
        self.index = {tok: i for i, tok in reversed(list(enumerate(self.vocabulary)))}
        if config.get("max_tokens") and len(self.vocabulary) > int(config["max_tokens"]):
            raise ModelFileError(f"TextVectorization layer '{self.name}': vocabulary has "
                                 f"{len(self.vocabulary)} entries > max_tokens={config['max_tokens']}")

    def _sequence_length(self, osl):
        """``output_sequence_length``: None, or an int in [1, MAX_OUTPUT_SEQUENCE_LENGTH];
        anything else is a ModelFileError raised before anything is allocated."""
        if osl is None:
            return None
        if isinstance(osl, bool) or not isinstance(osl, int):
            raise ModelFileError(f"TextVectorization layer '{self.name}': output_sequence_length="
                                 f"{str(osl)[:60]!s} is not an integer; the file was not written "
                                 "by Keras or is corrupt")
        if not 1 <= osl <= MAX_OUTPUT_SEQUENCE_LENGTH:
            raise ModelFileError(
                f"TextVectorization layer '{self.name}': output_sequence_length={osl} is outside "
                f"[1, {MAX_OUTPUT_SEQUENCE_LENGTH}] (scratch_layers.text.MAX_OUTPUT_SEQUENCE_LENGTH): "
                f"every text would become {osl} int64 ids ({osl * 8:,} bytes); the file is hostile "
                "or corrupt")
        return osl

    @staticmethod
    def as_strings(x):
        """Accept list/array of str (or bytes), shape (N,) or (N, 1)."""
        arr = np.asarray(x, dtype=object) if not isinstance(x, np.ndarray) else x
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise InputError(f"TextVectorization: expected raw strings of shape (N,) or (N, 1), "
                             f"got shape {arr.shape}")
        out = []
        for v in arr.tolist():
            if isinstance(v, bytes):
                v = decode_input(v)
            if not isinstance(v, str):
                raise InputError("TextVectorization: expected raw strings (str or bytes), got "
                                 f"{type(v).__name__} {v!r}. Pass the texts, e.g. np.array(list_of_str)")
            out.append(v)
        return out

    def tokenize(self, texts):
        return [split(standardize(t, self.standardize), self.split) for t in texts]

    def forward(self, x, mask=None):
        toks = self.tokenize(self.as_strings(x))
        T = self.output_sequence_length
        if T is None:
            T = max((len(t) for t in toks), default=0)
        out = np.zeros((len(toks), T), dtype=np.int64)
        get = self.index.get
        for n, t in enumerate(toks):
            ids = [get(tok, 1) for tok in t[:T]]
            out[n, :len(ids)] = ids
        return out
