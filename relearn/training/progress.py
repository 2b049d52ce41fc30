"""Progress lines for long stages: count, rate, ETA, plus whatever the caller wants to show.

Plain lines (not a redrawn bar) so that they read the same in a terminal, in `dvc repro` output
and in a CI log. A line is printed at most every `every` seconds, and always at the end.
"""
from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    def __init__(self, desc: str, total: int, unit: str = "step", every: float = 5.0, stream=None):
        self.desc, self.total, self.unit, self.every = desc, max(int(total), 1), unit, every
        self.stream = stream or sys.stdout
        self.done = 0
        self.extra_units = 0  # e.g. tokens, for a second rate
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1, tokens: int = 0, **info) -> None:
        self.done += n
        self.extra_units += tokens
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self._print(now, info)

    def _print(self, now: float, info: dict) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        parts = [f"[{self.desc}] {self.done}/{self.total} {self.unit}s ({100 * self.done / self.total:.0f}%)",
                 f"{rate:.2f} {self.unit}/s"]
        if self.extra_units:
            parts.append(f"{self.extra_units / elapsed:,.0f} tok/s")
        parts += [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()]
        parts.append(f"elapsed {_duration(elapsed)} eta {_duration(eta)}")
        print("  ".join(parts), file=self.stream, flush=True)
