"""The report's building blocks: tables, sections, and a section's declaration (title + inputs)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from pipelines.report.plots import Plot

if TYPE_CHECKING:
    from pipelines.report.inputs import ReportInputs


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: list[bool] = field(default_factory=list)  # right-align these columns
    compact: bool = False  # a narrow key/value table

    def __post_init__(self):
        if not self.numeric:
            self.numeric = [False] * len(self.columns)


@dataclass
class Section:
    key: str = ""  # the anchor in the page (set from the SectionSpec)
    title: str = ""
    takeaway: str = ""
    plots: list[Plot] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: str = ""  # one line saying what input is absent (the section shows only this)
    source: str = ""  # where the numbers come from


@dataclass(frozen=True)
class SectionSpec:
    """One section of the page: its anchor, its title, the inputs it reads and how it is built.

    ``inputs`` names fields of :class:`~pipelines.report.inputs.ReportInputs`; ``build`` receives exactly
    those as keyword arguments, so a section cannot read what it does not declare, and sections do not
    depend on each other or on their order."""

    key: str
    title: str
    inputs: tuple[str, ...]
    build: Callable[..., Section]

    def run(self, inputs: ReportInputs) -> Section:
        """The built section; a crash becomes a one-line note so that the rest of the report is written."""
        try:
            section = self.build(**{name: getattr(inputs, name) for name in self.inputs})
        except Exception as exc:  # noqa: BLE001 - one broken input must not sink the whole report
            section = Section(missing=f"This section failed: {type(exc).__name__}: {exc}")
        section = dataclasses.replace(section, key=self.key, title=self.title)
        section.takeaway = section.takeaway[:1].upper() + section.takeaway[1:]
        return section
