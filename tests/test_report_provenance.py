"""The report's provenance: the git commit it was generated from."""
from types import SimpleNamespace

import pytest


@pytest.mark.parametrize("status,expected", [
    ("", "abc123"),
    (" M README.md\nM  experiments/report.py\n", "abc123+uncommitted changes to README.md, experiments/report.py"),
    ("".join(f" M f{i}.py\n" for i in range(7)),
     "abc123+uncommitted changes to f0.py, f1.py, f2.py, f3.py, f4.py and 2 more"),
])
def test_provenance_names_the_uncommitted_files(monkeypatch, status, expected):
    """The report's git commit says which tracked files differed from it, not just that
    something did (a README edit is not a code change)."""
    from experiments.report import document

    def fake_run(cmd, **kw):
        return SimpleNamespace(stdout="abc123\n" if "rev-parse" in cmd else status)
    monkeypatch.setattr(document.subprocess, "run", fake_run)
    assert document._git_commit() == expected


@pytest.mark.parametrize("blas,expected", [
    ({"openblas_core": "SkylakeX", "OPENBLAS_CORETYPE": None},
     "OpenBLAS's own choice for this CPU"),
    ({"openblas_core": "Haswell", "OPENBLAS_CORETYPE": "Haswell"},
     "forced by <code>OPENBLAS_CORETYPE=Haswell</code>"),
])
def test_speed_ratios_name_the_blas_kernels(blas, expected):
    """The speed ratios depend on which OpenBLAS kernels NumPy ran: the summary, the
    benchmark section and the provenance table say which, and whether they were forced."""
    from experiments.report.sections.benchmarks import benchmark_section, speed_summary
    from experiments.report.sections.provenance import provenance_section
    bench = [{"family": "cnn", "impl": impl, "model": "m", "n_items": 10, "mean": t, "median": t, "min": t,
              "rounds": 3}
             for impl, t in (("keras", 2.0), ("scratch", 3.0), ("scratch_float32", 1.0))]
    summary = speed_summary(bench, (), blas)
    assert f"<b>{blas['openblas_core']}</b> kernels" in summary and expected in summary
    assert "1.50×" in summary and "0.50×" in summary
    assert expected in benchmark_section(bench, blas)
    env = {"versions": {}, "platform": "p", "cpus": 2, "profile": "full", "git_commit": "c",
           "date": "d", "blas": blas}
    prov = provenance_section(env, {"variants": []})
    assert f"OpenBLAS {blas['openblas_core']}" in prov
    assert ("forced by OPENBLAS_CORETYPE" in prov) == bool(blas["OPENBLAS_CORETYPE"])


def test_speed_ratios_are_ratios_of_medians():
    """One slow round (common on a shared machine) must not move the ratio: the report
    divides medians of rounds, not means."""
    from experiments.report.sections.benchmarks import ratio, speed_summary
    keras = {"family": "cnn", "impl": "keras", "model": "m", "n_items": 10, "mean": 3.0, "median": 2.0,
             "min": 1.9, "rounds": 5}
    scratch = dict(keras, impl="scratch", mean=3.0, median=3.0, min=2.9)
    fast = dict(keras, impl="scratch_float32", mean=3.0, median=1.0, min=0.9)
    summary = speed_summary([keras, scratch, fast])
    assert "<b>1.50×</b>" in summary and "<b>0.50×</b>" in summary
    assert ratio(scratch, None) == "n/a"


def test_speed_table_has_the_application_rows_after_the_families():
    """The keras.applications benchmarks (``application: true``, ``family`` the model's
    name) are rows of the speed summary after the study families, with the same columns:
    Keras' median and the scratch and ONNX Runtime ratios."""
    from experiments.report.sections.benchmarks import benchmark_section, speed_summary
    bench = []
    for fam, keras_s, extra in (("ResNet50", 2.0, {"application": True, "inputs": "64 random images of 96x96"}),
                                ("cnn", 4.0, {})):
        for impl, r in (("keras", 1.0), ("scratch", 1.5), ("scratch_float32", 0.75), ("onnxruntime", 0.25)):
            t = keras_s * r
            bench.append({"family": fam, "impl": impl, "model": fam, "n_items": 64, "mean": t, "median": t,
                          "min": t, "rounds": 5, **extra})
    summary = speed_summary(bench)
    assert "Keras median" in summary and "ONNX Runtime" in summary
    cnn = summary.index("cnn: forward pass, test split")
    resnet = summary.index("ResNet50 (keras.applications): forward pass, 64 random images of 96x96")
    assert cnn < resnet
    row = summary[resnet:].split("</tr>")[0]
    assert all(cell in row for cell in ("2 s", "<b>1.50×</b>", "<b>0.75×</b>", "<b>0.25×</b>")), row
    section = benchmark_section(bench)
    assert "keras.applications" in section and section.index("cnn") < section.index("ResNet50")
    assert "keras.applications" not in benchmark_section([b for b in bench if b["family"] == "cnn"])
