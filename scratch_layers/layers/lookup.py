"""``StringLookup`` and ``IntegerLookup`` (keras/src/layers/preprocessing/index_lookup.py)
without TensorFlow's hash tables.

A token's index is its position in the vocabulary after the special indices: the mask
(index 0, only with ``mask_token`` and ``output_mode="int"``), then ``num_oov_indices``
out-of-vocabulary buckets, then the tokens. An unknown token goes to the one OOV index,
or with several OOV buckets to ``floormod(value, n)`` (integers, ``oov_method="floormod"``)
or to a hash bucket of its string (FarmHash, or SipHash with ``salt``; see
:mod:`scratch_layers.layers.hashing`). ``invert=True`` maps indices back to tokens.
``output_mode`` one_hot / multi_hot / count encodes the indices as CategoryEncoding does
(int64, as Keras' TF backend returns them), tf_idf multiplies the counts by the
``idf_weights`` stored in ``model.weights.h5``.

The vocabulary comes from the config (``vocabulary=`` given to the constructor) or from
``assets/layers/<path>/vocabulary.txt`` (after ``adapt()``), parsed as Keras'
``load_assets`` does. The lookups are vectorised: strings through ``np.unique`` (one
dictionary look-up per distinct string), integers through ``np.searchsorted``. No gradient.
"""
import numpy as np

from ..errors import InputError, ModelFileError
from .bounds import check_sample_elements
from .hashing import hash_buckets, salt_key
from .layer import Layer
from .preprocessing import CATEGORICAL_MODES, as_string_array, encode_categorical, integer_ids
from . import text

_OUTPUT_MODES = ("int",) + CATEGORICAL_MODES + ("tf_idf",)
_ALIASES = {"binary": "multi_hot", "tf-idf": "tf_idf"}


def _output_mode(config):
    mode = config.get("output_mode", "int")
    return _ALIASES.get(mode, mode)


class IndexLookup(Layer):
    """The shared lookup; subclasses say what a token is (:meth:`_token`, ``strings``)."""

    reads_vocabulary = True   # the loader passes the vocabulary asset to the constructor
    strings = True

    @classmethod
    def weight_shapes(cls, config):
        """``idf_weights`` (one per index) in tf_idf mode; its length is checked once the
        vocabulary is known."""
        return [None] if _output_mode(config) == "tf_idf" else []

    def __init__(self, config, weights, class_name=None, vocabulary=None):
        self.output_mode = _output_mode(config)
        self.n_weights = 1 if self.output_mode == "tf_idf" else 0
        super().__init__(config, weights, class_name)
        self.check_options()
        self.where = where = f"{self.class_name} layer '{self.name}'"
        if self.output_mode not in _OUTPUT_MODES:
            raise self.unsupported("output_mode", self.output_mode, f"supported: {list(_OUTPUT_MODES)}")
        self.require("sparse", (False,), False)
        self.invert = bool(config.get("invert", False))
        if self.invert and self.output_mode != "int":
            raise ModelFileError(f"{where}: invert=True with output_mode='{self.output_mode}', "
                                 "which Keras refuses; the file is corrupt")
        self.input_kind = "int" if (self.invert or not self.strings) else "string"
        self.num_oov = self._count(config.get("num_oov_indices", 1), "num_oov_indices")
        # without OOV buckets an unknown token is an error, so the load-time probe's dummy
        # token may fail without the file being at fault
        self.dummy_input_may_fail = self.num_oov == 0 and not self.invert
        self.mask_token = self._special(config.get("mask_token"), "mask_token")
        self.oov_token = self._special(config.get("oov_token", self.default_oov), "oov_token")
        self.oov_method = self.require("oov_method", ("floormod", "farmhash"), "floormod")
        self.salt = salt_key(config.get("salt"), where)
        self.oov_start = 1 if self.mask_token is not None and self.output_mode == "int" else 0
        self.token_start = self.oov_start + self.num_oov
        self.tokens = self._vocabulary(config, vocabulary)
        self.vocabulary_size = self.token_start + len(self.tokens)
        frozen = config.get("vocabulary_size")
        if frozen is not None and frozen != self.vocabulary_size:
            raise ModelFileError(f"{where}: the vocabulary gives {self.vocabulary_size} indices, the "
                                 f"config says vocabulary_size={frozen}; they do not belong together")
        max_tokens = config.get("max_tokens")
        if max_tokens is not None and self.vocabulary_size > max_tokens:
            raise ModelFileError(f"{where}: the vocabulary has {self.vocabulary_size} entries > "
                                 f"max_tokens={max_tokens}")
        self.depth = self.vocabulary_size
        if config.get("pad_to_max_tokens") and self.output_mode != "int":
            if max_tokens is None:
                raise ModelFileError(f"{where}: pad_to_max_tokens without max_tokens, which Keras refuses")
            self.depth = self._count(max_tokens, "max_tokens")
        if self.output_mode != "int":
            check_sample_elements(self, (self.depth,))
        if self.output_mode == "tf_idf":
            self.idf = weights[0]
            if self.idf.shape != (self.depth,):
                raise ModelFileError(f"{where}: idf_weights of shape {self.idf.shape}, the vocabulary "
                                     f"implies ({self.depth},); the weights do not belong to this config")
        self._build_table()

    # ------------------------------------------------------------------ config
    def check_options(self):
        """Options only one of the two lookups has."""

    def _count(self, value, option):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ModelFileError(f"{self.where}: {option}={str(value)[:60]} is not a non-negative "
                                 "integer; the file was not written by Keras or is corrupt")
        return value

    def _special(self, value, option):
        """The mask or OOV token, None or a token of the vocabulary's kind."""
        if value is None:
            return None
        try:
            return self._token(value)
        except (TypeError, ValueError):
            raise ModelFileError(f"{self.where}: {option}={str(value)[:60]!r} is not a "
                                 f"{'string' if self.strings else 'integer'}") from None

    def _vocabulary(self, config, asset):
        """The tokens (special tokens removed), as Keras' ``set_vocabulary`` reads them."""
        vocab = text.configured_vocabulary(self, config, asset)
        try:
            vocab = [self._token(v) for v in vocab]
        except (TypeError, ValueError):
            raise ModelFileError(f"{self.where}: the vocabulary holds a value that is not a "
                                 f"{'string' if self.strings else 'integer'}; the file is corrupt") from None
        special = [self.mask_token] * self.oov_start + [self.oov_token] * self.num_oov
        tokens = vocab[self.token_start:] if vocab[:self.token_start] == special else vocab
        if not tokens:
            raise ModelFileError(f"{self.where}: the vocabulary is empty, which Keras refuses")
        if len(set(tokens)) != len(tokens):
            raise ModelFileError(f"{self.where}: the vocabulary repeats a token, which Keras refuses")
        if self.mask_token is not None and self.mask_token in tokens:
            raise ModelFileError(f"{self.where}: the mask token is inside the vocabulary, which "
                                 "Keras refuses")
        if self.invert and self.oov_token is not None and self.oov_token in tokens:
            raise ModelFileError(f"{self.where}: the OOV token is inside the vocabulary of an "
                                 "inverted lookup, which Keras refuses")
        return tokens

    # ------------------------------------------------------------------ lookup
    def _build_table(self):
        if self.strings:
            self.index = {t: self.token_start + i for i, t in enumerate(self.tokens)}
            self.token_array = np.empty(len(self.tokens), dtype=object)
            self.token_array[:] = self.tokens
        else:
            keys = np.asarray(self.tokens, dtype=np.int64)
            order = np.argsort(keys, kind="stable")
            self.sorted_keys, self.sorted_ids = keys[order], order + self.token_start
            self.token_array = keys

    def as_strings(self, x):
        """String input of any shape (``str`` or ``bytes``)."""
        return as_string_array(x, self)

    def _read(self, x):
        return as_string_array(x, self) if self.strings else integer_ids(x, self)

    def _lookup(self, x):
        """Index of each token of ``x`` in the table, -1 where it is not there."""
        if self.strings:
            flat = x.ravel()
            if not flat.size:
                return np.zeros(x.shape, np.int64)
            uniq, inverse = np.unique(flat, return_inverse=True)
            ids = np.fromiter((self.index.get(t, -1) for t in uniq), np.int64, len(uniq))
            return ids[inverse].reshape(x.shape)
        pos = np.minimum(np.searchsorted(self.sorted_keys, x), len(self.sorted_keys) - 1)
        return np.where(self.sorted_keys[pos] == x, self.sorted_ids[pos], -1)

    def _oov(self, x, missing):
        """The OOV index of each missing value (``_lookup_dense``)."""
        if self.num_oov == 0:
            if missing.any():
                bad = x[missing].ravel()[:5].tolist()
                raise InputError(f"{self.where}: values {bad} are not in the vocabulary and "
                                 "num_oov_indices=0 (Keras raises too)")
            return np.zeros(x.shape, np.int64)
        if self.num_oov == 1:
            return np.full(x.shape, self.oov_start, np.int64)
        if not self.strings and self.oov_method == "floormod":
            return np.mod(x, self.num_oov) + self.oov_start
        return hash_buckets(x, self.num_oov, self.salt) + self.oov_start

    def forward(self, x, mask=None):
        if self.invert:
            return self._inverse(integer_ids(x, self))
        x = self._read(x)
        ids = self._lookup(x)
        missing = ids < 0
        if self.mask_token is not None:
            masked = x == self.mask_token
            missing &= ~masked
        if missing.any():
            ids = np.where(missing, self._oov(x, missing), ids)
        if self.mask_token is not None:
            # int mode: the mask index 0; the encodings drop the mask (Keras maps it to the
            # largest int64, past every bin)
            ids = np.where(masked, 0 if self.output_mode == "int" else np.iinfo(np.int64).max, ids)
        if self.output_mode == "int":
            return ids
        if self.output_mode == "tf_idf":
            counts = encode_categorical(ids, "count", self.depth, self.idf.dtype, self)
            return counts * self.idf
        return encode_categorical(ids, self.output_mode, self.depth, np.int64, self)

    def _inverse(self, ids):
        """Index -> token: the tokens from ``token_start``, the mask token at 0 (with a mask
        token), the OOV token everywhere else."""
        known = (ids >= self.token_start) & (ids < self.vocabulary_size)
        pos = np.where(known, ids - self.token_start, 0)
        fill = self.oov_token
        if self.strings:
            out = np.where(known, self.token_array[pos], fill if fill is not None else "")
        else:
            out = np.where(known, self.token_array[pos], np.int64(fill if fill is not None else 0))
        if self.mask_token is not None:
            out = np.where(ids == 0, self.mask_token, out)
        return out.astype(object if self.strings else np.int64)

    def trainable_flags(self):
        return [False] * len(self.weights)


class StringLookup(IndexLookup):
    """``keras.layers.StringLookup``: string tokens (``encoding`` utf-8)."""

    default_oov = "[UNK]"

    def check_options(self):
        self.require("encoding", ("utf-8", "utf8", "UTF-8"), "utf-8")

    @staticmethod
    def _token(v):
        if not isinstance(v, str):
            raise TypeError(v)
        return v


class IntegerLookup(IndexLookup):
    """``keras.layers.IntegerLookup``: int64 tokens (the asset's lines are read with int())."""

    default_oov = -1
    strings = False

    def check_options(self):
        self.require("vocabulary_dtype", ("int64", "int32"), "int64")

    @staticmethod
    def _token(v):
        if isinstance(v, bool):
            raise TypeError(v)
        if isinstance(v, str):
            v = int(v.strip())
        if not isinstance(v, (int, np.integer)) or not -2 ** 63 <= int(v) < 2 ** 63:
            raise TypeError(v)
        return int(v)

