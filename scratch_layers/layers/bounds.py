"""Size caps for layers whose config alone can make an array arbitrarily large.

An ``UpSampling3D(size=(1000, 1000, 1000))``, a ``ZeroPadding3D`` of a million cells, a
``Conv3DTranspose`` with stride 10**6 or an adaptive pooling to 10**9 cells would allocate
gigabytes from a few bytes of ``config.json``. These layers check the number of values
one sample would hold *before* allocating it: twice, once when the layer is built from
the config (a lower bound, from the config alone: the load fails whatever the input) and
once per call on the actual shape (the load-time probe sample runs it, so a model with a
fixed input shape fails at load). Over the cap is :class:`~scratch_layers.errors.ModelFileError`.
"""
import math

from ..errors import ModelFileError

# Values one sample of one array may hold: 2**28 (2 GiB in float64). Far above any
# real model's activations (ResNet50 at 224x224 holds 0.8 million per sample per layer),
# far below what would exhaust memory on a chunk of one sample.
MAX_SAMPLE_ELEMENTS = 2 ** 28


def check_sample_elements(layer, dims, what="output"):
    """Raise ModelFileError when an array whose non-batch dimensions are ``dims`` would
    hold more than :data:`MAX_SAMPLE_ELEMENTS` values. Computed with Python ints (never
    overflows). ``layer``: the Layer the array belongs to (its name goes in the message)."""
    count = math.prod(int(d) for d in dims)
    if count > MAX_SAMPLE_ELEMENTS:
        raise ModelFileError(
            f"{layer.class_name} layer '{layer.name}': its {what} would hold {count:,} values per "
            f"sample (shape {tuple(int(d) for d in dims)}), over the cap of {MAX_SAMPLE_ELEMENTS:,} "
            "(scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS); the model file's config is "
            "hostile or corrupt, or the input is far larger than the model was built for")
    return count
