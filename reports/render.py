"""Renderers of a :class:`reports.table.Table`: Markdown, LaTeX (booktabs), CSV and HTML. They
only format: best value per column and group bold, second underlined (ties share the mark;
values are compared as shown), reported rows never ranked, NaN shown as "-", significance
markers after the Dice cell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.collect import share_text
from reports.table import MARKERS, UP, Table, rank_marks


def _cell(mean: float, std: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if np.isfinite(std) else "")


def _cells(table: Table, digits: int, text, pm: str, marker) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per row label and column: the cell text (mean ± std, escaped by ``text``, ± written ``pm``,
    plus the significance ``marker``) and its rank mark ("best", "second" or "")."""
    ranks = rank_marks(table, digits)
    body, marks = {}, {}
    for label in table.mean.index:
        body[label], marks[label] = {}, {}
        for col in table.columns:
            cell = _cell(table.mean.at[label, col], table.std.at[label, col], digits)
            if cell != "-":
                cell = text(cell).replace(text(" ± "), pm) + marker(table.marks.get((label, col), ""))
            body[label][col] = cell
            marks[label][col] = ranks.get((label, col), "") if cell != "-" else ""
    frame = lambda d: pd.DataFrame.from_dict(d, orient="index")[table.columns]  # noqa: E731
    return frame(body), frame(marks)


def _header(table: Table, col: str, up: str, down: str) -> str:
    return table.headers[col] + (up if table.direction[col] == UP else down)


def to_markdown(table: Table, digits: int = 1) -> str:
    """GitHub Markdown: **best**, <u>second</u>, arrows in the header, reported rows in italics."""
    cells, marks = _cells(table, digits, str, " ± ", lambda s: f" {MARKERS[s]}" if s else "")
    cells = cells.mask(marks == "best", "**" + cells + "**").mask(marks == "second", "<u>" + cells + "</u>")
    cells.insert(0, "Labeled", [share_text(g) for g in table.rows["group"]])
    cells.insert(1, "Method", [f"*{i}*" if k == "reported" else i for i, k in zip(table.rows["name"], table.rows["kind"])])
    cells.insert(2, "Seeds", [str(int(v)) if v else "-" for v in table.n])
    cells.columns = ["Labeled", "Method", "Seeds"] + [_header(table, c, " ↑", " ↓") for c in table.columns]
    return cells.to_markdown(index=False, disable_numparse=True)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _styled(table: Table, digits: int, text, bold: str, under: str, pm: str, marker, row_name, headers: list[str],
            index_as_columns: bool = False):
    """A pandas ``Styler`` of the table: cell text (mean ± std + significance marker), the best
    value per column and group styled with ``bold``, the second with ``under``; index = (group,
    row name), or two leading columns "Labeled" and "Method" with ``index_as_columns``."""
    df, marks = _cells(table, digits, text, pm, marker)
    css = marks.replace({"best": bold, "second": under})
    df.index = css.index = pd.MultiIndex.from_tuples([(text(share_text(table.rows.at[label, "group"])), row_name(label)) for label in df.index],
                                                     names=["Labeled", "Method"])
    df.columns = css.columns = headers
    if index_as_columns:
        df = df.reset_index()
        css = css.reset_index()
        css["Labeled"] = css["Method"] = ""
    return df.style.apply(lambda _: css.set_axis(_.index, axis=0), axis=None)


def to_latex(table: Table, digits: int = 1) -> str:
    """A booktabs ``tabular`` to ``\\input`` (needs ``\\usepackage{booktabs}`` and, for the
    significance markers, ``amssymb``): one row per table row, the labeled share on the first
    row of its group, ``\\midrule`` between groups, best bold, second underlined, reported rows
    in italics."""
    tex_marks = {"better": r"$^{\blacktriangle}$", "worse": r"$^{\blacktriangledown}$"}
    cells, marks = _cells(table, digits, tex_escape, r"$\pm$", lambda m: tex_marks.get(m, ""))
    wrap = {"best": lambda c: rf"\textbf{{{c}}}", "second": lambda c: rf"\underline{{{c}}}", "": lambda c: c}
    headers = [tex_escape(_header(table, c, "", "")) + (r"$\uparrow$" if table.direction[c] == UP else r"$\downarrow$")
               for c in table.columns]
    lines = [r"\begin{tabular}{ll" + "r" * len(table.columns) + "}", r"\toprule", " & ".join(["Labeled", "Method", *headers]) + r" \\"]
    previous = None
    for label in table.mean.index:
        group = table.rows.at[label, "group"]
        if group != previous:
            lines.append(r"\midrule")
        name = tex_escape(table.rows.at[label, "name"])
        name = rf"\textit{{{name}}}" if table.rows.at[label, "kind"] == "reported" else name
        row = [wrap[marks.at[label, c]](cells.at[label, c]) for c in table.columns]
        lines.append(" & ".join([tex_escape(share_text(group)) if group != previous else "", name, *row]) + r" \\")
        previous = group
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def latex_document(fragment_name: str, caption: str = "", legend: str = "") -> str:
    """A standalone document that compiles the table fragment with pdflatex (legend under it)."""
    cap = rf"\caption*{{{tex_escape(caption)}}}" + "\n" if caption else ""
    tex_legend = tex_escape(legend).replace("▲", r"$\blacktriangle$").replace("▼", r"$\blacktriangledown$").replace("±", r"$\pm$")
    after = ("\\par\\smallskip\n\\begin{minipage}{0.95\\linewidth}\\footnotesize " + tex_legend + "\\end{minipage}\n") if legend else ""
    return (
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{amssymb}\n"
        "\\usepackage{caption}\n\\usepackage[landscape,margin=1cm]{geometry}\n\\pagestyle{empty}\n\\begin{document}\n"
        "\\begin{table}[h]\n\\centering\n\\scriptsize\n\\setlength{\\tabcolsep}{3pt}\n"
        f"{cap}\\input{{{fragment_name}}}\n{after}\\end{{table}}\n\\end{{document}}\n"
    )


def to_csv(table: Table) -> str:
    """Machine-readable: one row per table row, <column>_mean / <column>_std, plus row metadata."""
    df = table.rows[["group", "kind", "protocol"]].copy()
    df["group"] = [share_text(g) for g in df["group"]]
    df.insert(0, "row", table.rows["name"].values)
    df["seeds"] = table.n.values
    for col in table.columns:
        df[f"{col}_mean"] = table.mean[col].values
        df[f"{col}_std"] = table.std[col].values
    return neutral_csv(df).to_csv(index=False, float_format="%.4f")


def neutral_csv(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells a spreadsheet would run as a formula neutralised (:func:`bench.core.redact.csv_cell`)."""
    from bench.core.redact import csv_cell

    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or pd.api.types.is_string_dtype(out[c]):
            out[c] = [csv_cell(v) for v in out[c]]
    return out


def to_html(table: Table, digits: int = 1) -> str:
    """An HTML table (bold best, underlined second) for the self-contained report page,
    rendered by pandas' ``Styler.to_html``."""
    import html

    def name(label):
        n = html.escape(table.rows.at[label, "name"])
        return f"<i>{n}</i>" if table.rows.at[label, "kind"] == "reported" else n

    st = _styled(table, digits, html.escape, "font-weight: bold", "text-decoration: underline", " ± ",
                 lambda m: f" {MARKERS[m]}" if m else "", name, [html.escape(_header(table, c, " ↑", " ↓")) for c in table.columns],
                 index_as_columns=True)
    return st.set_table_attributes('class="results"').hide(axis="index").to_html(doctype_html=False)
