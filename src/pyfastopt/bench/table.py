"""The comparison table, as aligned text (stdout) or GitHub markdown."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .results import Record, Skipped

_Column = tuple[str, Callable[[Record], str]]


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _parity(r: Record) -> str:
    if r.parity_ok is None:
        return "—"
    return "ok" if r.parity_ok else f"FAIL ({r.parity_max_abs:.1e})"


COLUMNS: tuple[_Column, ...] = (
    ("optimizer", lambda r: r.optimizer),
    ("model", lambda r: r.model),
    ("params", lambda r: f"{r.params:,}"),
    ("impl", lambda r: r.impl),
    ("median µs", lambda r: _num(r.median_us, ".1f")),
    ("IQR µs", lambda r: _num(r.iqr_us, ".1f")),
    ("vs torch", lambda r: _ratio(r.speedup_vs_torch)),
    ("vs best torch", lambda r: _ratio(r.speedup_vs_best_torch)),
    ("GB/s", lambda r: _num(r.gbps, ".2f" if (r.gbps or 0) < 10 else ".1f")),
    ("roofline", lambda r: "—" if r.roofline_share is None else f"{r.roofline_share:.0%}"),
    ("fwd+bwd µs", lambda r: _num(r.fwd_bwd_us, ".1f")),
    ("parity", _parity),
)
_RIGHT = {
    "params",
    "median µs",
    "IQR µs",
    "vs torch",
    "vs best torch",
    "GB/s",
    "roofline",
    "fwd+bwd µs",
}


def _rows(records: Sequence[Record]) -> list[list[str]]:
    return [[cell(r) for _, cell in COLUMNS] for r in records]


def _skip_notes(skipped: Sequence[Skipped]) -> list[str]:
    reasons: dict[str, list[str]] = {}
    for s in skipped:
        reasons.setdefault(s.reason, [])
        if s.optimizer not in reasons[s.reason]:
            reasons[s.reason].append(s.optimizer)
    return [f"not run: {reason} ({', '.join(opts)})" for reason, opts in reasons.items()]


def format_text(records: Sequence[Record], skipped: Sequence[Skipped] = ()) -> str:
    """An aligned table, a blank line between groups, notes on what was not run."""
    heads = [name for name, _ in COLUMNS]
    rows = _rows(records)
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(heads)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if h in _RIGHT else c.ljust(w) for c, w, h in zip(cells, widths, heads)
        ).rstrip()

    out = [line(heads), line(["-" * w for w in widths])]
    previous = None
    for r, row in zip(records, rows):
        if previous is not None and (r.optimizer, r.model) != previous:
            out.append("")
        previous = (r.optimizer, r.model)
        out.append(line(row))
    out += [""] + _skip_notes(skipped) if skipped else []
    return "\n".join(out)


def format_markdown(
    records: Sequence[Record], skipped: Sequence[Skipped] = (), header: Sequence[str] = ()
) -> str:
    """A markdown document: the machine lines as a list, then the table, then notes."""
    heads = [name for name, _ in COLUMNS]
    out = [f"- {line}" for line in header]
    if header:
        out.append("")
    out.append("| " + " | ".join(heads) + " |")
    out.append("|" + "|".join("---:" if h in _RIGHT else "---" for h in heads) + "|")
    out += ["| " + " | ".join(row) + " |" for row in _rows(records)]
    if skipped:
        out.append("")
        out += [f"- {note}" for note in _skip_notes(skipped)]
    return "\n".join(out) + "\n"
