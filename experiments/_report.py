"""A reproduction as one self-contained web page: every figure and table it wrote and the verdicts, readable without
LaTeX (`write_report`, called by `experiments.reproduce`)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from ._base import Tally

GREEK = {
    name: f"&{name};"
    for name in (
        "alpha",
        "beta",
        "delta",
        "epsilon",
        "eta",
        "kappa",
        "lambda",
        "mu",
        "nu",
        "rho",
        "sigma",
        "tau",
        "theta",
        "Delta",
        "Omega",
        "Sigma",
    )
}
SYMBOLS = {
    r"\times": "×",
    r"\le": "≤",
    r"\ge": "≥",
    r"\approx": "≈",
    r"\to": "→",
    r"\infty": "∞",
    r"\,": " ",
    r"\%": "%",
    r"\_": "_",
    r"\\": "",
    r"\ ": " ",
    r"\flat": "♭",
    r"\natural": "♮",
    r"\mathrm": "",
    r"\top": "T",
}


def plain(tex: str) -> str:
    """LaTeX text of the generated tables and values as HTML: numbers, powers of ten, Greek letters, sub- and
    superscripts; what it does not know is shown without its backslash."""
    text = html.escape(tex, quote=False)
    text = re.sub(r"\\ensuremath\{((?:[^{}]|\{[^{}]*\})*)\}", r"\1", text)
    text = re.sub(r"\\(?:textbf|emph|text|mathrm|operatorname)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", text)
    text = re.sub(r"\\sqrt\{([^{}]*)\}", r"√(\1)", text)
    for name, entity in GREEK.items():
        text = re.sub(rf"\\{name}(?![A-Za-z])", entity, text)
    for command, symbol in SYMBOLS.items():
        text = text.replace(command, symbol)
    text = re.sub(r"\^\{([^{}]*)\}", r"<sup>\1</sup>", text)
    text = re.sub(r"\^(\w)", r"<sup>\1</sup>", text)
    text = re.sub(r"_\{([^{}]*)\}", r"<sub>\1</sub>", text)
    text = re.sub(r"(?<=\w)_(\w)", r"<sub>\1</sub>", text)
    text = text.replace("$", "").replace("{", "").replace("}", "")
    return re.sub(r"\\([A-Za-z]+)", r"\1", text)


STYLE = """
body { font-family: sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { border-bottom: 2px solid #888; }
.holds { color: #1a7f37; } .fails { color: #b42318; } .other { color: #8a5a00; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { font-size: 0.85em; color: #555; }
.summary td:nth-child(3) { font-weight: bold; }
"""


def _verdict_class(verdict: str) -> str:
    lowered = verdict.lower()
    if lowered.startswith(("holds", "a property", "lower")):
        return "holds"
    if lowered.startswith(("fails", "a finite-step", "higher")):
        return "fails"
    return "other"


def write_report(tally: Tally, path: Path, *, title: str, seconds: float) -> Path:
    """Write the page: the verdicts first, then each experiment's tables and figures (PNG, embedded)."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>{tally.done} runs computed, {tally.reused} reused, {tally.failed} failed, in {seconds:.0f} s.</p>",
    ]
    if tally.notes:
        parts.append(
            "<p>Resuming found:</p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in tally.notes) + "</ul>"
        )
    parts.append(
        "<h2>Verdicts</h2><table class='summary'><tr><th>experiment</th><th>claim</th><th>verdict</th>"
        "<th>deciding number</th></tr>"
    )
    for f in tally.findings:
        parts.append(
            f"<tr><td>{html.escape(f['experiment'])}</td><td>{plain(f['claim'])}</td>"
            f"<td class='{_verdict_class(f['verdict'])}'>{html.escape(f['verdict'])}</td>"
            f"<td>{plain(f['number'])}</td></tr>"
        )
    parts.append("</table>")
    experiments = list(dict.fromkeys([e for e, *_ in tally.tables] + [e for e, _ in tally.figure_owners]))
    for experiment in experiments:
        parts.append(f"<h2 id='{html.escape(experiment)}'>{html.escape(experiment)}</h2>")
        for owner, name, header, rows in tally.tables:
            if owner != experiment:
                continue
            parts.append(
                f"<table><caption>{html.escape(name)}</caption><tr>"
                + "".join(f"<th>{plain(h)}</th>" for h in header)
                + "</tr>"
            )
            parts += ["<tr>" + "".join(f"<td>{plain(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        for owner, figure in tally.figure_owners:
            if owner == experiment and figure.suffix == ".png" and figure.exists():
                data = base64.b64encode(figure.read_bytes()).decode()
                parts.append(
                    f"<figure><img alt='{html.escape(figure.stem)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(figure.name)}</figcaption></figure>"
                )
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path
