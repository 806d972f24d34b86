"""Progress bars for long steps (tqdm on stderr; silent when disabled or not a terminal in tests)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


class _Bar:
    def __init__(self, bar):
        self._bar = bar

    def update(self, n: int = 1, **postfix):
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)


@contextmanager
def progress(total: int | None, desc: str, enabled: bool = True):
    enabled = enabled and os.environ.get("QUANTGATE_PROGRESS", "1") != "0"
    if not enabled:
        yield _Bar(None)
        return
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.5)
    try:
        yield _Bar(bar)
    finally:
        bar.close()
