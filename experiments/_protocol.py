r"""The evaluation protocol of the completion experiments: a validation split, choices made on it, paired verdicts.

Split. Besides the m training entries of a problem, `VALIDATION` x m more entries are observed and held out (drawn
once per seed, `split`): the training set keeps the size of the published settings, and the validation entries
serve only the choices. Every method of a seed is trained on the same training entries and every choice it needs (the
stopping time, the penalty strength, the dynamics' rates) is made on the validation error, the mean squared error
on the held-out entries. The test error, Arora et al.'s mean of $(W - W^*)_{jk}^2$ over every entry but the held-out
ones (`Split.test_error`), is read at the chosen point only. Its minimum over every candidate (the oracle a test-chosen stop would
get) is reported beside it, labelled, and never enters a verdict.

Candidates. A method is a set of runs (one per candidate setting: strengths, rates) of one seed, each measured on
its saved times; `choose` picks the (run, time) of the lowest validation error and returns the test error there.
A choice at a run's last saved time means the horizon cut the search short: it is flagged (`at_horizon`), and a
verdict that rests on it says so.

Paired verdicts (`Paired`). Two methods, A and B, are compared seed by seed on $d_s = \log_{10}(e^A_s / e^B_s)$,
the ratio of their test errors at their validation-chosen points. Reported: the per-seed values, the mean of d with
its 95 % Student t interval $\bar d \pm t_{0.975, k-1}\, s_d / \sqrt{k}$ over the k seeds (exact coverage for normal
d; a percentile bootstrap over 5 or 10 seeds covers markedly less than it says), the seeds where A is lower, and the
exact two-sided sign test (ties dropped). The rule, fixed before any number is read: A is *lower* when the whole
interval lies below $-\log_{10}$ `SAME` (A better by more than the factor SAME, with confidence), *higher* when it
lies above $\log_{10}$ SAME, *the same* when it lies inside $(-\log_{10} \text{SAME}, \log_{10} \text{SAME})$, and
*not resolved* when it reaches across an edge of that band. Fewer than `MIN_SEEDS` seeds resolve nothing. Where one
claim reads several comparisons at once (the steps of the finite-step check), each interval is widened to the
confidence 1 - 0.05 / (their number) (Bonferroni).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.stats

import flows

from ._base import tex_number

VALIDATION = 0.15
"""The held-out entries, as a fraction of the training entries (13 % of all observed)."""
SPLIT_SEED_OFFSET = 20_000
"""The split of seed s is drawn with seed SPLIT_SEED_OFFSET + s (not the problem's or the init's normals)."""
SAME = 2.0
"""Test errors within this factor count as the same."""
CONFIDENCE = 0.95
MIN_SEEDS = 3


@dataclasses.dataclass(frozen=True)
class Split:
    """A problem's observed entries split into training and validation; `train` is the training problem (with the
    truth), the validation entries are (rows, cols, values)."""

    train: flows.EntryProblem
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray

    def validation_error(self, W) -> np.ndarray:
        """The mean squared error on the validation entries (per matrix of a stack)."""
        W = np.asarray(W)
        return np.mean((W[..., self.rows, self.cols] - self.values) ** 2, axis=-1)

    def test_error(self, W) -> np.ndarray:
        """Arora et al.'s test error, the mean of $(W - W^*)^2$, over every entry but the held-out ones (which the
        choices saw; per matrix of a stack)."""
        mask = np.ones(self.train.shape, dtype=bool)
        mask[self.rows, self.cols] = False
        return np.mean((np.asarray(W) - np.asarray(self.train.truth))[..., mask] ** 2, axis=-1)

    def errors(self, W) -> dict[str, np.ndarray]:
        """The test and validation errors of W (a stack)."""
        return {"test": self.test_error(W), "validation": self.validation_error(W)}

    def unobserved(self) -> np.ndarray:
        """A mask of the entries outside the training set."""
        mask = np.ones(self.train.shape, dtype=bool)
        mask[np.asarray(self.train.rows), np.asarray(self.train.cols)] = False
        return mask


def held_out(m: int, fraction: float = VALIDATION) -> int:
    """How many validation entries go with m training entries."""
    return int(round(fraction * m))


def split(problem: flows.EntryProblem, seed: int, held: int) -> Split:
    """Hold out `held` of `problem`'s entries (a seeded draw, see `SPLIT_SEED_OFFSET`)."""
    rows, cols, values = (np.asarray(a) for a in (problem.rows, problem.cols, problem.y))
    order = np.random.default_rng(SPLIT_SEED_OFFSET + seed).permutation(problem.m)
    held = order[:held]
    kept = np.sort(order[len(held) :])
    train = flows.Problem.from_entries(problem.shape, rows[kept], cols[kept], values[kept], truth=problem.truth)
    return Split(train, rows[held], cols[held], values[held])


@dataclasses.dataclass(frozen=True)
class Choice:
    """A method's validation-chosen point for one seed, and the oracle beside it."""

    test: float
    """Test error at the chosen point."""
    validation: float
    index: int
    """Which candidate run."""
    t: float
    at_horizon: bool
    """The chosen time is the run's horizon (the search may have been cut short there); a run that ended at a stopping
    loss before it is not at its horizon."""
    oracle: float
    """The lowest test error over every candidate and time (not a method: an oracle's stop and strength)."""


def choose(candidates: list[dict]) -> Choice:
    """The (run, time) of the lowest validation error over `candidates` (dicts of "t", "validation", "test" series,
    as measured along each run, and optionally "t1", the run's horizon: without it the last saved time counts as the
    horizon); ties go to the earlier candidate and time. ValueError for no candidates."""
    if not candidates:
        raise ValueError("choose needs at least one candidate")
    best = None
    for i, c in enumerate(candidates):
        k = int(np.nanargmin(c["validation"]))
        if best is None or c["validation"][k] < best[0]:
            best = (c["validation"][k], i, k)
    value, i, k = best
    chosen = candidates[i]
    return Choice(
        test=float(chosen["test"][k]),
        validation=float(value),
        index=i,
        t=float(chosen["t"][k]),
        at_horizon=bool(chosen["t"][k] >= chosen["t1"] * (1 - 1e-9)) if "t1" in chosen else k == len(chosen["t"]) - 1,
        oracle=_finite_min(np.concatenate([np.ravel(c["test"]) for c in candidates])),
    )


def _finite_min(values: np.ndarray) -> float:
    """The smallest value that is not NaN; NaN where every value is."""
    defined = values[~np.isnan(values)]
    return float(defined.min()) if defined.size else float("nan")


@dataclasses.dataclass(frozen=True)
class Paired:
    """A paired comparison of A against B over seeds (module docstring): d = log10(A / B) per seed."""

    d: np.ndarray
    mean: float
    low: float
    high: float
    p: float
    """Exact two-sided sign test of "A lower and A higher are equally likely", ties dropped."""

    @classmethod
    def of(cls, a, b, confidence: float = CONFIDENCE) -> "Paired":
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a.shape != b.shape or a.ndim != 1 or not a.size:
            raise ValueError(f"paired comparisons need two equal, non-empty 1-d arrays; got {a.shape} and {b.shape}")
        d = np.log10(a / b)
        mean = float(d.mean())
        if d.size < MIN_SEEDS:
            low, high = -math.inf, math.inf
        else:
            half = float(scipy.stats.t.ppf(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
            low, high = mean - half, mean + half
        wins, losses = int(np.sum(d < 0)), int(np.sum(d > 0))
        p = float(scipy.stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
        return cls(d=d, mean=mean, low=low, high=high, p=p)

    @classmethod
    def over_common(cls, a, b, confidence: float = CONFIDENCE) -> "Paired | None":
        """The comparison over the seeds where both sides are defined (NaN marks a seed without a value: a failed
        candidate, a run that diverged); None when there are none."""
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        both = np.isfinite(a) & np.isfinite(b)
        return cls.of(a[both], b[both], confidence) if both.any() else None

    @property
    def median(self) -> float:
        return float(np.median(self.d))

    @property
    def verdict(self) -> str:
        """ "lower", "higher", "the same" or "not resolved" (module docstring)."""
        band = math.log10(SAME)
        if self.high < -band:
            return "lower"
        if self.low > band:
            return "higher"
        if -band < self.low and self.high < band:
            return "the same"
        return "not resolved"

    @property
    def factor(self) -> str:
        """The mean ratio A / B with its interval, as LaTeX: $10^{mean}$ [$10^{low}$, $10^{high}$] (no interval below
        `MIN_SEEDS` seeds)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{tex_number(10**self.mean)} [too few seeds]"
        return interval(10**self.mean, 10**self.low, 10**self.high, ends=beside_band)

    @property
    def losses(self) -> int:
        return int(np.sum(self.d > 0))

    @property
    def wins(self) -> int:
        return int(np.sum(self.d < 0))


def interval(value: float, low: float, high: float, ends=tex_number) -> str:
    """A value and its interval as LaTeX text (`ends` writes the interval's ends)."""
    return f"{tex_number(value)} [{ends(low)}, {ends(high)}]"


def beside_band(x: float) -> str:
    """A ratio as LaTeX, with a digit added (up to four) while it would print as an edge of the band "the same",
    1 / SAME or SAME, without being on it: the verdict turns on which side of an edge an interval's end lies."""
    for digits in (2, 3, 4):
        text = tex_number(x, digits)
        if text not in (tex_number(SAME, digits), tex_number(1 / SAME, digits)):
            return text
    return text
