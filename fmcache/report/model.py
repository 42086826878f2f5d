"""What a report is made of, independent of how it is rendered: sections of tables,
figures, sentences and notes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Column:
    """One displayed column: ``key`` names the value in the table's frame.

    ``ci`` names the (low, high) columns shown after the value, ``sd`` the column of its
    spread across seeds (shown as "± sd" where set); ``better`` ("higher" or "lower") marks
    the best value of the column.
    """

    key: str
    title: str
    ci: tuple[str, str] | None = None
    sd: str | None = None
    better: str | None = None
    decimals: int = 3
    signed: bool = False  # changes read better as +0.012 / -0.034
    wrap: bool = False  # long free text; other cells keep to one line and the table scrolls sideways


@dataclass
class Table:
    """A table shown on the page; ``frame`` is exactly what its CSV download holds."""

    id: str
    title: str
    frame: pd.DataFrame
    columns: list[Column]
    caption: str = ""
    csv_name: str = "table.csv"


@dataclass
class Figure:
    """A rendered figure: PNG bytes and the text that replaces it for a screen reader."""

    id: str
    title: str
    png: bytes
    alt: str
    caption: str = ""


@dataclass
class Sentence:
    """A summary sentence and the table it takes its numbers from."""

    text: str
    table_id: str


@dataclass
class Section:
    """A top-level part of the page (an ``<h2>``) holding blocks in order."""

    id: str
    title: str
    intro: str = ""
    blocks: list[object] = field(default_factory=list)  # Table | Figure | Sentence list | Subhead | Note


@dataclass
class Subhead:
    """An ``<h3>`` inside a section."""

    id: str
    title: str


@dataclass
class Note:
    """A short remark, e.g. why a part is missing."""

    text: str


@dataclass
class Report:
    """The whole page."""

    title: str
    subtitle: str
    sections: list[Section]
