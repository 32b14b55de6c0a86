"""Reference baselines on the studies' own splits: what a trivial or classical model scores.

A study model's test macro-F1 means little without a reference point, so the report
puts beside each family's selected model, on the same train / validation / test split:

* **majority class**: always predict the most frequent training class;
* text (NusaX): **TF-IDF + logistic regression** and **TF-IDF + linear SVM**
  (scikit-learn), each with its features (word 1-2-grams or character 2-5-grams) and
  regularisation ``C`` chosen on the validation split's macro-F1, then scored once on test;
* images (CIFAR-10): **logistic regression on pixels** (each image averaged over 4x4
  blocks down to 8x8x3 = 192 values, standardised on the training split; ``C`` chosen
  on validation).

The test split never chooses anything.  Results are cached in ``reports/references.json``
under a key made of the data fingerprint and the grid (:data:`SPEC`), written atomically,
so a report never fits them twice for the same data; ``--retrain`` does not touch them.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .studies import fingerprint

CACHE_PATH = Path(__file__).resolve().parent.parent / "reports" / "references.json"

SPEC = {
    "version": 1,
    "text": {"features": {"word 1-2-grams": {"analyzer": "word", "ngram_range": (1, 2)},
                          "char 2-5-grams": {"analyzer": "char_wb", "ngram_range": (2, 5)}},
             "logreg_C": (1.0, 10.0, 100.0), "svm_C": (0.03, 0.1, 0.3, 1.0, 3.0)},
    # 4x4 blocks: 8x8x3 = 192 values; 2x2 blocks (768 values) cost about 3 min of CPU per fit
    # on the reference machine, 4x4 about 45 s (validation accuracy 0.41 at C = 0.01)
    "image": {"pool": 4, "logreg_C": (0.001, 0.01, 0.1), "max_iter": 300},
}


def _scores(y_true, y_pred, n_classes: int) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    labels = list(range(n_classes))
    return {"macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred))}


def majority(splits) -> dict:
    n = len(splits.class_names)
    cls = int(np.bincount(np.asarray(splits.y_train, int), minlength=n).argmax())
    val = _scores(splits.y_val, np.full(len(splits.y_val), cls), n)
    test = _scores(splits.y_test, np.full(len(splits.y_test), cls), n)
    return {"name": "majority class", "chosen": {"class": splits.class_names[cls]},
            "val_macro_f1": val["macro_f1"], "test_macro_f1": test["macro_f1"],
            "test_accuracy": test["accuracy"]}


def _select(name: str, candidates, splits, n: int) -> dict:
    """Fit every (description, make_model, features) candidate on train, keep the best on
    validation macro-F1, score it on test."""
    best = None
    for chosen, fit_predict in candidates:
        val_pred, test_pred = fit_predict()
        v = _scores(splits.y_val, val_pred, n)["macro_f1"]
        if best is None or v > best[0]:
            best = (v, chosen, test_pred)
    v, chosen, test_pred = best
    test = _scores(splits.y_test, test_pred, n)
    return {"name": name, "chosen": chosen, "val_macro_f1": v, "test_macro_f1": test["macro_f1"],
            "test_accuracy": test["accuracy"]}


def text_references(splits, spec: dict = SPEC["text"]) -> list[dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    n = len(splits.class_names)
    texts = [list(map(str, x)) for x in (splits.x_train, splits.x_val, splits.x_test)]
    feats = {}
    for fname, kw in spec["features"].items():
        vec = TfidfVectorizer(sublinear_tf=True, lowercase=True, **{**kw, "ngram_range": tuple(kw["ngram_range"])})
        feats[fname] = (vec.fit_transform(texts[0]), vec.transform(texts[1]), vec.transform(texts[2]))

    def candidates(make, cs):
        for fname, (tr, va, te) in feats.items():
            for c in cs:
                def fit_predict(tr=tr, va=va, te=te, c=c):
                    m = make(c).fit(tr, splits.y_train)
                    return m.predict(va), m.predict(te)
                yield {"features": fname, "C": c}, fit_predict

    return [majority(splits),
            _select("TF-IDF + logistic regression",
                    candidates(lambda c: LogisticRegression(C=c, max_iter=2000), spec["logreg_C"]), splits, n),
            _select("TF-IDF + linear SVM",
                    candidates(lambda c: LinearSVC(C=c, random_state=0), spec["svm_C"]), splits, n)]


def pooled_pixels(x: np.ndarray, pool: int) -> np.ndarray:
    """(N, H, W, C) images averaged over ``pool`` x ``pool`` blocks, flattened."""
    x = np.asarray(x, np.float32)
    n, h, w, c = x.shape
    x = x[:, :h - h % pool, :w - w % pool].reshape(n, h // pool, pool, w // pool, pool, c).mean(axis=(2, 4))
    return x.reshape(n, -1)


def image_references(splits, spec: dict = SPEC["image"]) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n = len(splits.class_names)
    scaler = StandardScaler()
    tr = scaler.fit_transform(pooled_pixels(splits.x_train, spec["pool"]))
    va = scaler.transform(pooled_pixels(splits.x_val, spec["pool"]))
    te = scaler.transform(pooled_pixels(splits.x_test, spec["pool"]))
    side = splits.x_train.shape[1] // spec["pool"]
    what = f"{side}x{side}x{splits.x_train.shape[3]} = {tr.shape[1]} standardised pixel means"

    def candidates():
        for c in spec["logreg_C"]:
            def fit_predict(c=c):
                m = LogisticRegression(C=c, max_iter=spec["max_iter"]).fit(tr, splits.y_train)
                return m.predict(va), m.predict(te)
            yield {"features": what, "C": c}, fit_predict

    return [majority(splits), _select("logistic regression on pixels", candidates(), splits, n)]


def compute(splits) -> dict:
    kind = "image" if getattr(splits.x_train, "ndim", 1) == 4 else "text"
    start, cpu = time.perf_counter(), time.process_time()
    models = image_references(splits) if kind == "image" else text_references(splits)
    return {"kind": kind, "data_fingerprint": splits.fingerprint, "split_sizes": splits.sizes(),
            "models": models, "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1)}


def cache_key(splits) -> str:
    kind = "image" if getattr(splits.x_train, "ndim", 1) == 4 else "text"
    return f"{kind}-{fingerprint({'data': splits.fingerprint, 'spec': SPEC[kind], 'v': SPEC['version']})}"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def cached(splits, path: Path = CACHE_PATH, compute_fn=compute) -> dict:
    """The references of ``splits``: from ``path`` when its key is there, else computed
    once and added to ``path`` (written to a temporary file and renamed into place)."""
    key = cache_key(splits)
    entry = _read(path).get(key)
    if entry is not None:
        return entry
    entry = compute_fn(splits)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = _read(path)  # re-read: another process may have added a key meanwhile
    doc[key] = entry
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=list) + "\n")
    os.replace(tmp, path)
    return entry


def for_families(families, path: Path = CACHE_PATH) -> dict:
    """``results.json`` → ``references``: per family, its dataset's reference models."""
    out, by_data = {}, {}
    for fam in families:
        splits = fam.load_data()
        if splits.fingerprint not in by_data:
            by_data[splits.fingerprint] = cached(splits, path)
        out[fam.name] = by_data[splits.fingerprint]
    return out


def best(refs: dict | None) -> dict | None:
    """The reference model with the best *validation* macro-F1 (what a user would pick)."""
    models = (refs or {}).get("models") or []
    return max(models, key=lambda m: m["val_macro_f1"]) if models else None
