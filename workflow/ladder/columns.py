"""Aligned plain-text tables for the terminal (`ladder plan`, `ladder status`)."""

from __future__ import annotations


def aligned(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """Columns padded to their widest cell, two spaces apart; columns in `right` align right
    (numbers), the others left. A row shorter than the headers leaves its last cells empty."""
    rows = [[*row, *[""] * (len(headers) - len(row))] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])
