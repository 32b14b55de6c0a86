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
    from experiments import report

    def fake_run(cmd, **kw):
        return SimpleNamespace(stdout="abc123\n" if "rev-parse" in cmd else status)
    monkeypatch.setattr(report.subprocess, "run", fake_run)
    assert report._git_commit() == expected
