"""Progress bars of long calls (imports, embedding, fine-tuning, re-ranking) drawn with tqdm:
widgets in notebooks, text bars on terminals. The extension reads its progress board while the
statement runs and hands the drawer each job's state."""

from __future__ import annotations

import sys
from typing import Any

#: One job's state: what, position, length (None for a row counter), message, finished.
Task = tuple[str, int, "int | None", str, bool]


def wanted() -> bool:
    """Bars by default where someone watches: a terminal, or a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class Bars:
    """The bars of one call, one per job in the order the jobs started; finished bars go away
    as the CLI's do."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._bars: list[Any] = []

    def update(self, tasks: list[Task]) -> None:
        for i, (what, position, length, message, finished) in enumerate(tasks):
            if i == len(self._bars):
                unit = "rows" if length is None else "it"
                self._bars.append(self._tqdm(total=length, desc=what, unit=unit, leave=False))
            bar = self._bars[i]
            if bar.disable:
                continue
            if position > bar.n:
                bar.update(position - bar.n)
            if message:
                bar.set_postfix_str(message, refresh=False)
            if finished:
                bar.close()

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
