"""What theory predicts, checked against trajectories of `flows`. Imports flows, never the reverse.

closed_form (exact solutions), eigenbasis (the shared-eigenbasis claim), references (convex interpolants),
small_init (the small-initialization limit and its certificate), deep (deep-product dynamics), flatness
(scaled Hessian trace and the flattest interpolant); cli runs them all as `gradflow check`.
"""

from . import closed_form, deep, eigenbasis, flatness, references, small_init

__all__ = ["closed_form", "deep", "eigenbasis", "flatness", "references", "small_init"]
