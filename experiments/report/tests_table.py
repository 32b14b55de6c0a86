"""pytest-html's own test table: hidden behind one checkbox, each row's log reduced to what
helps (a skip reason, a failure; no captured TensorFlow chatter)."""
from __future__ import annotations

from .markup import esc

_NOISE = ("retracing", "tf.function", "triggered tf.function", "WARNING: All log messages before absl")


def tests_toggle(n_tests: int | None = None) -> str:
    """The pytest-html results table is hidden until this box is ticked (CSS only)."""
    what = f"the {n_tests} test results" if n_tests else "the test results"
    return ('<div class="tests-toggle scratchnet" id="tests"><b>The test session.</b> '
            f'<label><input type="checkbox" id="sn-show-tests"> show {what} and pytest\'s environment '
            "(pytest-html's table; each row's log collapsed)</label></div>")


def clean_log(report, data: list) -> None:
    """pytest-html's log cell of one test, cut to what a reader needs: a skip's reason (not
    the raw ``(path, line, reason)`` tuple), a failure's traceback and output without
    TensorFlow's retracing warnings, and nothing for a pass (its output is in the terminal)."""
    if report.skipped:
        lr = report.longrepr
        reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
        data[:] = [esc(reason)]
    elif report.passed:
        data[:] = ["passed (captured output is not kept in the report)"]
    else:
        data[:] = ["\n".join(line for line in chunk.splitlines() if not any(n in line for n in _NOISE))
                   for chunk in data]
