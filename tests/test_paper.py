"""The paper's prose carries no hand-typed number: every number comes through \\gf{...} from an experiment.

Allowed, explicitly: the small constants 0, 1 and 2 of equations and their indices and powers (subscripts,
superscripts: $W_{11}$, $n^2$, $\\log_{10}$); numbers inside names (Tsit5, float64); the names "depth N" of the models
and the numbers of the claims ("claim 6", a table row "6. ..."). Everything else (a measured value, a setting, a
threshold) must be a generated value."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "paper" / "main.tex"

REMOVED = [
    r"(?<!\\)%.*",  # comments
    r"\\gf\{[^}]*\}",  # generated values
    r"\\(?:cite|ref|label|input|includegraphics|bibliography|bibliographystyle|usepackage|graphicspath|phantom)"
    r"(?:\[[^\]]*\])?\{[^}]*\}",
    r"\\begin\{(?:tabular|table|figure|proposition|proof)\}(?:\[[^\]]*\])?(?:\{[^}]*\})?",
    r"p\{[0-9.]+cm\}",  # column widths
    r"\\(?:vspace|hspace)\{[^}]*\}|\\\\\[[^\]]*\]",
    r"width=[0-9.]+\\linewidth",
    r"\[[0-9.]+(?:pt|ex|em|cm)\]",
    r"\\setlength\{[^}]*\}\{[^}]*\}",  # layout lengths
]
ALLOWED = [
    r"(?i)\bdepths?[\s-]+\d(?:\s+and\s+\d)?",  # model names
    r"(?i)\bclaims?\s+\d(?:,\s+\d)*(?:\s+and\s+\d)?|\\claim\{\d\}",  # claim numbers
    r"(?m)^\d\. ",  # a claim's row in the summary table
    r"(?<![A-Za-z0-9])[012](?![0-9.])",  # equation constants
]


def numbers_in_prose(text: str) -> list[str]:
    text = text.split("\\begin{document}", 1)[1]
    for pattern in REMOVED:
        text = re.sub(pattern, " ", text)
    # A power of ten with a generated exponent is the generated number; indices and powers ($W_{11}$, $n^2$,
    # $\log_{10}$, \frac12) are not numbers of the prose.
    text = re.sub(r"10\^\{\s*\}", " ", text)
    text = re.sub(r"[_^]\{[^{}]*\}|[_^]\d|\\frac\d\d", " ", text)
    for pattern in ALLOWED:
        text = re.sub(pattern, " ", text)
    # A digit inside a word (Tsit5, float64) is part of a name.
    found = re.finditer(r"(?<![A-Za-z0-9.])\d+(?:\.\d+)?(?![A-Za-z0-9])", text)
    return [f"{m.group()} in ...{text[max(0, m.start() - 40) : m.end() + 10]!r}..." for m in found]


def test_no_number_in_the_paper_is_typed_by_hand():
    found = numbers_in_prose(PAPER.read_text())
    assert not found, "numbers in paper/main.tex that are not generated values:\n" + "\n".join(found)


def test_the_check_finds_a_typed_number_and_passes_generated_ones():
    text = "\\begin{document} the error is 0.043 at $n = \\gf{completion/n}$, depth 3, claim 6, $W_{11}$, $n^2$"
    found = numbers_in_prose(text)
    assert len(found) == 1 and "0.043" in found[0]
    assert not numbers_in_prose("\\begin{document} $10^{\\gf{a/b}}$ for Tsit5, $\\log_{10} x$, $2 \\times 2$")
