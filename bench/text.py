"""Plain-text tables for the terminal."""

from collections.abc import Sequence


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str], right: Sequence[str] = ()) -> str:
    """Align rows (dicts) under the given columns; numbers get thousands separators."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if c in right else v.ljust(w) for v, w, c in zip(values, widths, columns)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def figure_table(row: dict, float_format: str) -> str:
    """One row as a two-column table (figure, value), floats as `float_format` says: a command's single result."""
    figures = [{"figure": k, "value": format(v, float_format) if isinstance(v, float) else str(v)}
               for k, v in row.items()]
    return format_table(figures, ["figure", "value"], ["value"])


def scorer_line(scorers: dict[str, str]) -> str:
    """The scorers under a table: packages, and each model file's SHA-256 (first 12 hex digits)."""
    names = [v for k, v in scorers.items() if not k.endswith("_sha256")]
    hashes = [f"{k.removeprefix('dnsmos_').removesuffix('_sha256')} {v[:12]}" for k, v in scorers.items()
              if k.endswith("_sha256")]
    return "scored by " + "; ".join(names) + (f" (model sha256 {', '.join(hashes)})" if hashes else "")
