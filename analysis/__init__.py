"""What theory predicts, checked against trajectories of `flows`. Imports flows' public names only, never the reverse.

closed_form (exact solutions), eigenbasis (the shared-eigenbasis claim), references (convex interpolants),
small_init (the small-initialization limit and its certificate), deep (deep-product dynamics), flatness
(scaled Hessian trace and the flattest interpolant); checks computes every check's rows once, for the
tests and `gradflow check`.
"""

from . import checks, closed_form, deep, eigenbasis, flatness, references, small_init

__all__ = ["checks", "closed_form", "deep", "eigenbasis", "flatness", "references", "small_init"]
