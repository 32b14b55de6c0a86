"""What a cluster build shows while it runs: a bar over runs and one line per finished run."""
from __future__ import annotations

import sys


class Progress:
    """A bar over runs on stderr (done/total, running, failed, elapsed, ETA) and one line
    per finished run on ``out``."""

    def __init__(self, total: int, enabled: bool, out):
        self.out, self.bar = out, None
        if enabled and total:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="run", desc="[scratchnet] runs", file=sys.stderr,
                            dynamic_ncols=True, mininterval=1.0)

    def status(self, running: int, failed: int) -> None:
        text = f"running {running}, failed {failed}"
        if self.bar is not None and text != getattr(self, "_last", None):
            self._last = text
            self.bar.set_postfix_str(text, refresh=True)

    def line(self, text: str, step: bool = True) -> None:
        if self.bar is not None:
            self.bar.clear()
        print(text, file=self.out, flush=True)
        if self.bar is not None:
            if step:
                self.bar.update(1)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
