"""Progress bars that suit where stderr goes.

Design: on a terminal, a tqdm bar (redrawn in place with carriage returns). Anywhere else (a log file,
a pipe, CI) redrawing only piles up carriage-return lines, so `LineProgress` writes one plain line at
most every `interval` seconds and at the end: a redirected 10-minute run logs a few dozen lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


class LineProgress:
    """The part of tqdm's interface ttmem uses, as occasional whole lines."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        interval: float = 30.0,
        file: TextIO | None = None,
    ) -> None:
        self.iterable = iterable
        self.total = total if total is not None or iterable is None else len(iterable)  # type: ignore[arg-type]
        self.n, self.desc, self.unit, self.interval = initial, desc, unit, interval
        self.file = file or sys.stderr
        self.postfix = ""
        self._last = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, count: int = 1) -> None:
        self.n += count
        if time.monotonic() - self._last >= self.interval:
            self._write()

    def _write(self) -> None:
        total = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{total} {self.unit}{share}{extra}", file=self.file, flush=True)
        self._last = time.monotonic()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write()


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """tqdm on a terminal, LineProgress otherwise; keyword arguments as tqdm's (total, initial, desc, unit)."""
    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)
