"""Generated conclusions say only what the numbers show."""
from experiments.conclusions import conclude, overfitting


def row(label, value, f1, val, loss=None, n=10000, acc=None):
    loss = loss or [2.0 - 0.2 * i for i in range(len(val))]
    return {"label": label, "value": value, "f1": f1, "accuracy": acc if acc is not None else f1,
            "n_test": n, "history": {"loss": loss, "val_loss": val}, "best_val_loss": min(val)}


def test_overfitting_detects_the_epoch_after_the_val_minimum():
    o = overfitting({"loss": [2, 1.5, 1.2, 1.0, 0.8], "val_loss": [1.9, 1.4, 1.3, 1.35, 1.5]})
    assert o["start_epoch"] == 4 and o["best_val"] == 1.3 and o["last_val"] == 1.5
    assert overfitting({"loss": [2, 1.5, 1.2], "val_loss": [1.9, 1.4, 1.3]}) is None
    # val rises but train loss rises too: not overfitting
    assert overfitting({"loss": [2, 1.5, 1.7], "val_loss": [1.9, 1.4, 1.6]}) is None


def test_monotonic_increase_and_best_margin():
    text = conclude("Layers", [row("1", 1, 0.60, [1, .9]), row("2", 2, 0.65, [1, .8]), row("3", 3, 0.70, [1, .7])])
    assert "Best test macro-F1: 3 (0.7000), 0.0500 ahead of 2" in text
    assert "rises monotonically as the hyperparameter grows." in text
    assert "same variant" in text
    assert "No variant overfits" in text
    assert "lowest in the last epoch for 3 of 3 variants" in text


def test_non_monotonic_and_validation_disagreement():
    text = conclude("Units", [row("32", 32, 0.60, [1, .7]), row("64", 64, 0.70, [1, .8]), row("128", 128, 0.65, [1, .9])])
    assert "not monotonic" in text and "peaks at 64" in text
    assert "Validation loss would have picked 32" in text


def test_categorical_study_makes_no_monotonic_claim_and_flags_noise():
    text = conclude("Pooling", [row("max", "max", 0.700, [1, .8], n=400), row("avg", "avg", 0.705, [1, .9], n=400)])
    assert "monoton" not in text
    assert "below the sampling noise" in text


def test_monotonic_trend_within_noise_is_qualified():
    text = conclude("K", [row("3", (3, 3), 0.700, [1, .9]), row("5", (5, 5), 0.699, [1, .8]), row("7", (7, 7), 0.698, [1, .7])])
    assert "falls monotonically as the hyperparameter grows (though within noise)" in text


def test_overfitting_is_reported_with_its_epoch():
    text = conclude("K", [row("a", 1, 0.7, [1.0, 0.8, 0.9, 1.0], loss=[1.5, 1.0, 0.7, 0.5]), row("b", 2, 0.6, [1.0, 0.9])])
    assert "Overfitting shows in a from epoch 3" in text
    assert "lowest in the last epoch for 1 of 2" in text
