"""The Provenance section: versions, platform, BLAS kernels, profile, commit, date, data."""
from __future__ import annotations

from ..markup import esc, table


def _blas_cell(blas: dict | None) -> str:
    if not blas or not blas.get("openblas_core"):
        return "unknown (OpenBLAS not found)"
    forced = blas.get("OPENBLAS_CORETYPE")
    return f"OpenBLAS {esc(blas['openblas_core'])}" + (
        f" (forced by OPENBLAS_CORETYPE={esc(forced)})" if forced else " (its own choice)")


def provenance_section(env: dict, doc: dict) -> str:
    v = env["versions"]
    rows = [["Python / TensorFlow / Keras / NumPy",
             " / ".join(v.get(k, "?") for k in ("python", "tensorflow", "keras", "numpy"))],
            ["platform", f"{esc(env['platform'])}, {env['cpus']} CPUs"],
            ["NumPy BLAS kernels", _blas_cell(env.get("blas"))],
            ["profile", env["profile"]], ["git commit", esc(env["git_commit"])],
            ["date (UTC)", env["date"]]]
    seen = set()
    for var in doc["variants"]:
        if var["family"] in seen or not var["runs"]:
            continue
        seen.add(var["family"])
        sizes = " / ".join(f"{k} {n:,}" for k, n in (var["split_sizes"] or {}).items())
        rows.append([f"data: {var['family']}", f"{esc(var['data_source'])}; splits {sizes}"])
    return '<h2 id="provenance">Provenance</h2>' + table(["", ""], rows)
