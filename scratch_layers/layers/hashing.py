"""String hashing as TensorFlow does it, without TensorFlow, and Keras' ``Hashing`` layer.

* ``tf.strings.to_hash_bucket_fast(s, n)`` = ``Fingerprint64(s) mod n``, FarmHash's
  ``farmhashna::Hash64`` (:func:`fingerprint64`);
* ``tf.strings.to_hash_bucket_strong(s, n, key)`` = ``SipHash-2-4(key, s) mod n``
  (highwayhash's ``SipHash``, :func:`siphash24`).

Both run on the UTF-8 bytes of each string, in uint64 arithmetic that wraps as C++'s
does. They are vectorised over strings: the strings are grouped by byte length (the
algorithms read at offsets that depend on the length), and each group is hashed at once
with NumPy uint64 columns.
"""
import numpy as np

from ..errors import InputError, ModelFileError
from .bounds import check_sample_elements
from .layer import Layer
from .preprocessing import CATEGORICAL_MODES, as_string_array, encode_categorical, positive_int

U64 = np.uint64
_K0, _K1, _K2 = U64(0xc3a5c85c97cb3127), U64(0xb492b66fbe98f273), U64(0x9ae16a3b2f90404f)


def _rot(x, r):
    return (x >> U64(r)) | (x << U64(64 - r)) if r else x


def _shift_mix(v):
    return v ^ (v >> U64(47))


def _hash_len16(u, v, mul):
    a = (u ^ v) * mul
    a ^= a >> U64(47)
    b = (v ^ a) * mul
    b ^= b >> U64(47)
    return b * mul


class _Bytes:
    """A group of strings of one byte length ``n``, as a (m, n) uint8 matrix: ``fetch(o)``
    is the little-endian uint64 at byte ``o`` of each (``Fetch64``), ``fetch32`` the uint32."""

    def __init__(self, rows, n):
        self.rows, self.n = rows, n

    def fetch(self, o, size=8):
        cols = np.ascontiguousarray(self.rows[:, o:o + size])
        return cols.view("<u8" if size == 8 else "<u4")[:, 0].astype(U64)

    def fetch32(self, o):
        return self.fetch(o, 4)

    def byte(self, o):
        return self.rows[:, o].astype(U64)


def _weak_hash_len32(b, o, a, c):
    """``WeakHashLen32WithSeeds(s + o, a, c)``."""
    w, x, y, z = b.fetch(o), b.fetch(o + 8), b.fetch(o + 16), b.fetch(o + 24)
    a = a + w
    c = _rot(c + a + z, 21)
    d = a
    a = a + x + y
    c = c + _rot(a, 44)
    return a + z, c + d


def _farmhash_group(b):
    """``farmhashna::Hash64`` of each string of the group ``b`` (all of length b.n)."""
    n, m = b.n, b.rows.shape[0]
    ln = U64(n)
    if n == 0:
        return np.full(m, _K2, dtype=U64)
    if n < 4:
        y = b.byte(0) + (b.byte(n >> 1) << U64(8))
        z = ln + (b.byte(n - 1) << U64(2))
        y, z = y & U64(0xffffffff), z & U64(0xffffffff)  # uint32_t
        return _shift_mix(y * _K2 ^ z * _K0) * _K2
    mul = _K2 + ln * U64(2)
    if n < 8:
        return _hash_len16(ln + (b.fetch32(0) << U64(3)), b.fetch32(n - 4), mul)
    if n <= 16:
        a = b.fetch(0) + _K2
        c = b.fetch(n - 8)
        return _hash_len16(_rot(c, 37) * mul + a, (_rot(a, 25) + c) * mul, mul)
    if n <= 32:
        a = b.fetch(0) * _K1
        c = b.fetch(8)
        d = b.fetch(n - 8) * mul
        e = b.fetch(n - 16) * _K2
        return _hash_len16(_rot(a + c, 43) + _rot(d, 30) + e, a + _rot(c + _K2, 18) + d, mul)
    if n <= 64:
        a = b.fetch(0) * _K2
        c = b.fetch(8)
        d = b.fetch(n - 8) * mul
        e = b.fetch(n - 16) * _K2
        y = _rot(a + c, 43) + _rot(d, 30) + e
        z = _hash_len16(y, a + _rot(c + _K2, 18) + d, mul)
        e2 = b.fetch(16) * mul
        f = b.fetch(24)
        g = (y + b.fetch(n - 32)) * mul
        h = (z + b.fetch(n - 24)) * mul
        return _hash_len16(_rot(e2 + f, 43) + _rot(g, 30) + h, e2 + _rot(f + a, 18) + g, mul)
    seed = U64(81)
    zero = np.zeros(m, dtype=U64)
    x = np.full(m, seed, dtype=U64)
    y = np.full(m, seed * _K1 + U64(113), dtype=U64)
    z = _shift_mix(y * _K2 + U64(113)) * _K2
    v0 = v1 = w0 = w1 = zero
    x = x * _K2 + b.fetch(0)
    last64 = n - 64
    for s in range(0, ((n - 1) // 64) * 64, 64):  # 64-byte blocks (a loop over bytes, not rows)
        x = _rot(x + y + v0 + b.fetch(s + 8), 37) * _K1
        y = _rot(y + v1 + b.fetch(s + 48), 42) * _K1
        x ^= w1
        y = y + v0 + b.fetch(s + 40)
        z = _rot(z + w0, 33) * _K1
        v0, v1 = _weak_hash_len32(b, s, v1 * _K1, x + w0)
        w0, w1 = _weak_hash_len32(b, s + 32, z + w1, y + b.fetch(s + 16))
        z, x = x, z
    mul = _K1 + ((z & U64(0xff)) << U64(1))
    s = last64
    w0 = w0 + U64((n - 1) & 63)
    v0 = v0 + w0
    w0 = w0 + v0
    x = _rot(x + y + v0 + b.fetch(s + 8), 37) * mul
    y = _rot(y + v1 + b.fetch(s + 48), 42) * mul
    x ^= w1 * U64(9)
    y = y + v0 * U64(9) + b.fetch(s + 40)
    z = _rot(z + w0, 33) * mul
    v0, v1 = _weak_hash_len32(b, s, v1 * mul, x + w0)
    w0, w1 = _weak_hash_len32(b, s + 32, z + w1, y + b.fetch(s + 16))
    z, x = x, z
    return _hash_len16(_hash_len16(v0, w0, mul) + _shift_mix(y) * _K0 + z,
                       _hash_len16(v1, w1, mul) + x, mul)


def _sip_rounds(v0, v1, v2, v3, n):
    for _ in range(n):
        v0 = v0 + v1; v1 = _rot(v1, 64 - 13); v1 ^= v0; v0 = _rot(v0, 32)  # noqa: E702
        v2 = v2 + v3; v3 = _rot(v3, 64 - 16); v3 ^= v2  # noqa: E702
        v0 = v0 + v3; v3 = _rot(v3, 64 - 21); v3 ^= v0  # noqa: E702
        v2 = v2 + v1; v1 = _rot(v1, 64 - 17); v1 ^= v2; v2 = _rot(v2, 32)  # noqa: E702
    return v0, v1, v2, v3


def _siphash_group(b, key):
    """SipHash-2-4 of each string of the group with the 128-bit ``key`` (k0, k1)."""
    m, n = b.rows.shape[0], b.n
    k0 = np.full(m, U64(key[0]), dtype=U64)
    k1 = np.full(m, U64(key[1]), dtype=U64)
    v0, v1 = k0 ^ U64(0x736f6d6570736575), k1 ^ U64(0x646f72616e646f6d)
    v2, v3 = k0 ^ U64(0x6c7967656e657261), k1 ^ U64(0x7465646279746573)
    full = n - n % 8
    for o in range(0, full, 8):
        word = b.fetch(o)
        v3 = v3 ^ word
        v0, v1, v2, v3 = _sip_rounds(v0, v1, v2, v3, 2)
        v0 = v0 ^ word
    last = np.full(m, U64((n & 0xff) << 56), dtype=U64)
    for i in range(n % 8):
        last |= b.byte(full + i) << U64(8 * i)
    v3 = v3 ^ last
    v0, v1, v2, v3 = _sip_rounds(v0, v1, v2, v3, 2)
    v0 = v0 ^ last
    v2 = v2 ^ U64(0xff)
    v0, v1, v2, v3 = _sip_rounds(v0, v1, v2, v3, 4)
    return v0 ^ v1 ^ v2 ^ v3


def _hash_bytes(strings, group_hash):
    """uint64 hash of each ``bytes`` in the flat list ``strings``, one NumPy pass per length."""
    out = np.zeros(len(strings), dtype=U64)
    if not strings:
        return out
    lengths = np.fromiter((len(s) for s in strings), dtype=np.int64, count=len(strings))
    with np.errstate(over="ignore"):
        for n in np.unique(lengths):
            where = np.nonzero(lengths == n)[0]
            joined = b"".join(strings[i] for i in where)
            rows = np.frombuffer(joined, dtype=np.uint8).reshape(len(where), int(n))
            out[where] = group_hash(_Bytes(rows, int(n)))
    return out


def fingerprint64(strings):
    """FarmHash ``Fingerprint64`` (``farmhashna::Hash64``) of each ``bytes``: uint64 array."""
    return _hash_bytes(list(strings), _farmhash_group)


def siphash24(strings, key):
    """SipHash-2-4 of each ``bytes`` under ``key`` = (k0, k1) (two uint64): uint64 array."""
    key = tuple(int(k) % 2 ** 64 for k in key)
    return _hash_bytes(list(strings), lambda b: _siphash_group(b, key))


def to_bytes(values):
    """The bytes TensorFlow hashes for each element of the object/number array ``values``
    (flat list): ``str`` as UTF-8 (lone surrogates from undecodable input bytes back to
    those bytes), ``bytes`` as is, integers as ``tf.strings.as_string`` writes them."""
    out = []
    for v in values:
        if isinstance(v, bytes):
            out.append(v)
        elif isinstance(v, str):
            out.append(v.encode("utf-8", "surrogateescape"))
        elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            out.append(str(int(v)).encode())
        else:
            raise InputError(f"cannot hash {type(v).__name__} {v!r}: expected strings or integers")
    return out


def hash_buckets(values, num_buckets, salt=None):
    """``to_hash_bucket_fast`` (``salt`` None) or ``to_hash_bucket_strong`` (``salt`` =
    (k0, k1)) of the array ``values`` into ``num_buckets``: int64 array of its shape."""
    arr = np.asarray(values)
    flat = to_bytes(arr.ravel().tolist())
    h = fingerprint64(flat) if salt is None else siphash24(flat, salt)
    return (h % U64(num_buckets)).astype(np.int64).reshape(arr.shape)


def salt_key(salt, where):
    """Keras' ``salt``: an int k means (k, k); a pair is (k0, k1)."""
    if salt is None:
        return None
    if isinstance(salt, (list, tuple)) and len(salt) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) for s in salt):
        return tuple(salt)
    if isinstance(salt, int) and not isinstance(salt, bool):
        return (salt, salt)
    raise ModelFileError(f"{where}: salt={str(salt)[:60]} is not an integer or a pair of "
                         "integers; the file was not written by Keras or is corrupt")


# ----------------------------------------------------------------------------- layer

class Hashing(Layer):
    """``keras.layers.Hashing(num_bins, mask_value, salt, output_mode)``
    (keras/src/layers/preprocessing/hashing.py): each value becomes a bin in
    [0, num_bins): strings hash their UTF-8 bytes, integers their decimal string, floats
    are truncated to int64 first. ``to_hash_bucket_fast`` (FarmHash) without ``salt``,
    ``to_hash_bucket_strong`` (SipHash) with it. With ``mask_value`` (and num_bins > 1) the
    mask value maps to 0 and the others to 1 + hash mod (num_bins - 1). output_mode
    one_hot / multi_hot / count encodes the bins as CategoryEncoding does. No gradient."""

    float_dtype = np.float64  # the encoded output's dtype (Model.astype sets it)

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        where = f"Hashing layer '{self.name}'"
        self.num_bins = positive_int(config.get("num_bins"), where, "num_bins")
        self.output_mode = self.require("output_mode", ("int",) + CATEGORICAL_MODES, "int")
        self.require("sparse", (False,), False)
        self.salt = salt_key(config.get("salt"), where)
        self.mask_value = config.get("mask_value")
        if self.output_mode != "int":
            check_sample_elements(self, (self.num_bins,))

    def as_strings(self, x):
        """String input: any shape, ``str`` or ``bytes``."""
        return as_string_array(x, self)

    def forward(self, x, mask=None):
        x = np.asarray(x)
        if self.output_mode == "one_hot" and x.ndim and x.shape[-1] == 1:
            x = x[..., 0]
        bins = self.num_bins
        masked = None
        if self.mask_value is not None and bins > 1:
            bins -= 1
            masked = x == self.mask_value
        if x.dtype.kind == "f":
            if not np.isfinite(x).all():
                raise InputError(f"Hashing layer '{self.name}': NaN/inf cannot be hashed "
                                 "(TensorFlow's cast to int64 is undefined there)")
            x = np.trunc(x).astype(np.int64)
        elif x.dtype.kind == "b":
            raise InputError(f"Hashing layer '{self.name}': boolean input is not supported")
        ids = hash_buckets(x, bins, self.salt)
        if masked is not None:
            ids = np.where(masked, 0, ids + 1)
        if self.output_mode == "int":
            return ids
        return encode_categorical(ids, self.output_mode, self.num_bins, self.float_dtype, self)
