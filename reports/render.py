"""Tables as Markdown or LaTeX (booktabs), each with its caption and the command that reproduces it."""

from reports.tables import Table

LATEX_ESCAPES = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def markdown(table: Table) -> str:
    lines = [f"**Table: {table.caption}**", "", "| " + " | ".join(table.header) + " |",
             "| " + " | ".join(["---"] + ["---:"] * (len(table.header) - 1)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join([*lines, "", f"Reproduce: `{table.command}`{_unrecorded(table, ' (', ')')}", ""])


def _unrecorded(table: Table, before: str, after: str = "") -> str:
    """A note on runs logged without their command (made before mbsbench recorded it), or ''."""
    if not table.unrecorded:
        return ""
    return f"{before}{table.unrecorded} of the runs behind this table were logged without their command{after}"


def escape_latex(text: str) -> str:
    """Escape LaTeX specials; '+-' becomes $\\pm$."""
    out = "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("+-", r"$\pm$")


def latex(table: Table) -> str:
    spec = "l" + "r" * (len(table.header) - 1)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{escape_latex(table.caption)}}}",
             f"\\label{{tab:{table.name}}}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(escape_latex(h) for h in table.header) + r" \\", r"\midrule"]
    lines += [" & ".join(escape_latex(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", f"% reproduce: {table.command}",
              *([_unrecorded(table, "% ")] if table.unrecorded else []), ""]
    return "\n".join(lines)


RENDERERS = {"md": (markdown, ".md"), "latex": (latex, ".tex")}
