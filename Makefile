# Two entry points for a fresh clone:  `make quick` (the main job: the quick reproduction) and `make test`.
# Both bootstrap .venv from requirements.lock first; the bootstrap is idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv quick reproduce paper docs test test-slow clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

quick: $(STAMP)
	$(BIN)/gradflow reproduce --quick

reproduce: $(STAMP)
	$(BIN)/gradflow reproduce

# The paper: Debian's latexmk, texlive-latex-recommended, texlive-science and texlive-fonts-recommended.
paper:
	@command -v latexmk >/dev/null || { echo "make paper needs latexmk and TeX Live: apt-get install latexmk \
texlive-latex-recommended texlive-science texlive-fonts-recommended" >&2; exit 2; }
	cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error -jobname=gradflow main.tex

# The API reference site from the docstrings (MkDocs + mkdocstrings), warnings as errors, into site/.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs site .pytest_cache
