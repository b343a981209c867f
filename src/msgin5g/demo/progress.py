"""The demo's live progress: per path, how many UEs are done and what they got, and what the Uu
legs carried so far — a rich live display on a terminal, a status line every few seconds
otherwise (CI logs, pipes)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..outcome import Outcome
from .drive import UeRun
from .plan import Path
from .stats import UuCount
from .topology import LEG_OF, DemoOptions, Wire


class ProgressView:
    """Per-path progress: a rich live display on a terminal, a status line every few seconds
    otherwise (CI logs, pipes)."""

    def __init__(self, console: Console, opts: DemoOptions, totals: dict[Path, int], interval: float = 3.0):
        self.console = console
        self.opts = opts
        self.totals = totals
        self.interval = interval
        self.tally: dict[Path, Counter] = {p: Counter() for p in totals}
        self.uu: dict[Path, int] = dict.fromkeys(totals, 0)
        self.t0 = time.monotonic()
        self._progress: Progress | None = None
        self._tasks: dict[Path, int] = {}
        self._closed = False

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            columns = [TextColumn("{task.description:<22}")]
            if self.console.width >= 120:
                columns.append(BarColumn(bar_width=24))
            columns += [MofNCompleteColumn(), TextColumn("{task.fields[tally]}"), TimeElapsedColumn()]
            self._progress = Progress(*columns, console=self.console)
            self._progress.start()
            for path, n in self.totals.items():
                self._tasks[path] = self._progress.add_task(self.opts.path_label(path), total=n, tally="")
        return self

    def __exit__(self, *exc) -> None:
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
        else:
            self.print_line()

    def _tally_text(self, path: Path) -> str:
        t = self.tally[path]
        text = f"2.05 {t['2.05']:,} · 4.03 {t['4.03']:,} · 4.04 {t['4.04']:,}"
        if t["error"]:
            text += f" · no answer {t['error']:,}"
        if t["wrong"]:
            text += f" · [red]wrong {t['wrong']:,}[/]"
        return text + f" · Uu {self.uu[path]:,}"

    def record(self, run: UeRun) -> None:
        path = run.ue.path
        self.tally[path][run.code if run.outcome is not Outcome.ERROR else "error"] += 1
        self.tally[path]["done"] += 1
        if not run.ok:
            self.tally[path]["wrong"] += 1
        if self._progress is not None:
            self._progress.update(
                self._tasks[path], completed=self.tally[path]["done"], tally=self._tally_text(path)
            )

    def set_uu(self, legs: dict) -> None:
        for path in self.totals:
            self.uu[path] = UuCount.from_leg(legs.get(LEG_OF[path])).messages
        self._refresh()

    def _refresh(self) -> None:
        if self._progress is not None:
            for path, task in self._tasks.items():
                self._progress.update(task, tally=self._tally_text(path))

    def print_line(self) -> None:
        parts = [f"{self.opts.path_label(p)} {self.tally[p]['done']:,}/{n:,}" for p, n in self.totals.items()]
        uu = sum(self.uu.values())
        self.console.print(
            f"  {time.monotonic() - self.t0:6.1f} s  " + " · ".join(parts) + f" | Uu {uu:,} msgs"
        )

    async def ticker(self, wire: Wire) -> None:
        """Refresh the wire's counters; without a terminal, print a status line every few seconds
        while UEs finish, and every 15 s while they wait."""
        last_line, last_done = time.monotonic(), 0
        while True:
            await asyncio.sleep(0.5)
            self.set_uu(await wire.stats())
            if self._progress is not None:
                continue
            done = sum(t["done"] for t in self.tally.values())
            quiet = time.monotonic() - last_line
            if (done != last_done and quiet >= self.interval) or quiet >= 5 * self.interval:
                last_line, last_done = time.monotonic(), done
                self.print_line()
