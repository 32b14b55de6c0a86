"""When a verification passes: the project tolerance against float32 Keras, or, only where
float32 Keras itself misses that tolerance against its own float64 maths, the twin."""
import pytest

from experiments.verification import Verification

pytestmark = pytest.mark.cache  # fast, no model needed


def verification(**kw):
    base = dict(n_test=400, keras_f1=0.75, scratch_f1=0.75, keras_accuracy=0.8, predicted_classes=3,
                per_class_f1=[0.7, 0.8, 0.75], agreement=1.0, max_abs_diff=2e-6, allclose=True,
                confusion=[], keras_seconds=0.0, scratch_seconds=0.0, max_abs_diff_float64=1e-14,
                keras_float32_error=2e-6, keras_within_tolerance_of_twin=True)
    return Verification(**{**base, **kw})


def test_within_tolerance_passes():
    assert verification().passed


def test_keras_own_rounding_beyond_tolerance_defers_to_the_twin():
    v = verification(max_abs_diff=1.46e-5, allclose=False, keras_float32_error=1.46e-5,
                     keras_within_tolerance_of_twin=False)
    assert v.keras_rounding_only and v.passed


@pytest.mark.parametrize("change", [
    dict(max_abs_diff_float64=1e-7),                  # scratch differs from Keras' maths
    dict(keras_within_tolerance_of_twin=True),        # Keras is close to its maths: scratch is not
    dict(keras_within_tolerance_of_twin=None, max_abs_diff_float64=None),  # no twin: no excuse
    dict(agreement=0.9975),                           # an argmax differs
])
def test_a_miss_that_rounding_does_not_explain_fails(change):
    v = verification(**{**dict(max_abs_diff=1.46e-5, allclose=False, keras_float32_error=1.46e-5,
                               keras_within_tolerance_of_twin=False), **change})
    assert not v.passed


def test_twin_error_fails_even_within_float32_tolerance():
    assert not verification(max_abs_diff_float64=2e-9).passed
