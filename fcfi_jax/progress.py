"""A one-line progress report with ETA on stderr, for evaluation, training and checkpoint conversion.

No dependency: tqdm is not a runtime requirement, and clu (which has one) comes only with the `[train]` extra, while
evaluation and conversion must run without it.

On a terminal the line updates in place (carriage return); anywhere else (CI logs, files, pipes) it prints a plain new
line at most every `every_s` seconds plus the final one, so a log stays readable instead of filling with thousands of
`\\r` fragments.
"""
import sys
import time


def format_seconds(seconds: float) -> str:
    """Short human duration: '42s', '3m05s', '2h07m' (a running ETA needs no more precision)."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left if the remaining items go at the average rate so far; None before the first item."""
    if done <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0) * elapsed / done


class Progress:
    """`done/total` of a loop with elapsed time, rate and ETA, on one line of stderr.

        bar = Progress(len(items), "DAVIS", unit="images")
        for x in items:
            ...
            bar.update(info="NoC@90 3.21")   # one more done; `info` goes after the count
        bar.close()

    quiet=True prints nothing. `clock`, `stream` and `tty` are injectable for tests."""

    def __init__(self, total: int, label: str, *, unit: str = "", quiet: bool = False, stream=None,
                 clock=time.perf_counter, tty: bool | None = None, every_s: float | None = None):
        self.total, self.label, self.unit, self.quiet = int(total), label, unit, quiet
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        # A terminal redraws cheaply but should not flicker; a log gets one line per interval.
        self.every_s = (0.1 if tty else 30.0) if every_s is None else every_s
        self.done, self.info = 0, ""
        self.t0 = clock()
        self._last_print = None
        self._width = 0
        self._printed_state = None
        self._closed = False

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        count = f"{self.done}/{self.total}" + (f" {self.unit}" if self.unit else "")
        parts = [f"{self.label}: {count}"] + ([self.info] if self.info else [])
        timing = format_seconds(elapsed)
        if self.done > 0 and elapsed > 0:
            rate = self.done / elapsed
            per = f"/{self.unit[:-1] if self.unit.endswith('s') else self.unit or 'item'}"
            digits = 0 if rate >= 100 else 1 if rate >= 10 else 2
            timing += f", {rate:.{digits}f}/s" if rate >= 1 else f", {1 / rate:.1f}s{per}"
        eta = eta_seconds(self.done, self.total, elapsed)
        if self.done >= self.total:
            timing += ", done"
        elif eta is not None:
            timing += f", ETA {format_seconds(eta)}"
        parts.append(timing)
        return " | ".join(parts)

    def update(self, n: int = 1, *, done: int | None = None, info: str | None = None):
        """Advance by `n` (or set the absolute count `done`) and redraw if it is time to."""
        self.done = self.done + n if done is None else int(done)
        if info is not None:
            self.info = info
        if self.quiet:
            return
        now = self.clock()
        if self._last_print is not None and now - self._last_print < self.every_s and self.done < self.total:
            return
        self._emit()
        self._last_print = now

    def _emit(self):
        text = self.line()
        if self.tty:
            # Pad over the previous text: a shorter line would otherwise leave its tail on screen.
            pad = max(self._width - len(text), 0)
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._printed_state = (self.done, self.info)

    def close(self, info: str | None = None):
        """Print the final state (unless the last update already did) and end the line."""
        if self._closed:
            return
        self._closed = True
        if info is not None:
            self.info = info
        if self.quiet:
            return
        if self._printed_state != (self.done, self.info):   # a final state already shown is not repeated
            self._emit()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
