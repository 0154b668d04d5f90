"""Tables that fit the terminal: numbers are never cut (no `0.00…`), text wraps, and when even
that is too wide the least needed columns go, named under the table."""

from __future__ import annotations

import copy
import re
from typing import Sequence

from rich.table import Table
from rich.text import Text

_NUMERIC = re.compile(r"\d")
_UNBREAKABLE = 24  # a cell with a digit up to this long is a number (with its unit): kept whole
_TEXT_MIN = 18  # text columns may wrap down to this (identifiers such as precision_fallback stay whole)


def _plain(cell) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        try:
            return Text.from_markup(cell).plain
        except Exception:  # noqa: BLE001 - not markup after all: measure it as it is
            return cell
    return str(cell)


def _widths(column) -> tuple[int, int]:
    """(the narrowest the column may get, the width it would like): numbers whole, words of text
    down to a few characters, the header wrapped at its words."""
    cells = [_plain(c) for c in column._cells]
    header = _plain(column.header)
    longest_word = max((len(w) for w in header.split()), default=0)
    numbers = [c for c in cells if c and _NUMERIC.search(c) and len(c) <= _UNBREAKABLE]
    texts = [c for c in cells if c and c not in numbers]
    narrowest = max([longest_word, *map(len, numbers)]
                    + [min(max((len(w) for w in t.split()), default=0), _TEXT_MIN) for t in texts])
    wanted = max([len(header), *map(len, cells)], default=0)
    return narrowest, max(wanted, narrowest)


def fit(table: Table, width: int, drop: Sequence[str] = ()) -> Table:
    """Make `table` fit `width` columns: every column gets a fixed width no narrower than its
    numbers (so none is cut), text wraps; if the narrowest layout is still too wide, drop the
    columns named in `drop` (in that order), then from the right (never the first)."""
    table = copy.copy(table)  # the caller's table stays as it was
    table.columns = [copy.copy(column) for column in table.columns]
    sizes = [_widths(column) for column in table.columns]
    kept = list(range(len(table.columns)))
    headers = [_plain(c.header) for c in table.columns]
    order = [headers.index(name) for name in drop if name in headers] + list(range(len(headers) - 1, 0, -1))

    def overhead(n: int) -> int:
        return 3 * n + 1  # padding of 1 each side and a border per column, one more border

    dropped = []
    for index in order:
        if sum(sizes[i][0] for i in kept) + overhead(len(kept)) <= width:
            break
        if index in kept and len(kept) > 1:
            kept.remove(index)
            dropped.append(headers[index])
    widths = {i: sizes[i][0] for i in kept}
    spare = width - overhead(len(kept)) - sum(widths.values())
    while spare > 0:  # share what is left out, one character at a time, to the columns still short
        short = [i for i in kept if widths[i] < sizes[i][1]]
        if not short:
            break
        for i in short[:spare]:
            widths[i] += 1
        spare -= min(len(short), spare)
    table.columns = [table.columns[i] for i in kept]
    for position, (column, i) in enumerate(zip(table.columns, kept)):
        column._index = position
        column.width, column.min_width, column.max_width = widths[i], None, None
        column.no_wrap, column.overflow = False, "fold"
    if dropped:
        note = f"not shown at {width} columns: {', '.join(dropped)} (widen the terminal or use --json)"
        table.caption = f"{table.caption}\n{note}" if table.caption else note
        table.caption_justify = "left"
    table.expand = False
    return table
