"""What theory predicts, checked against trajectories of `flows`. Imports flows, never the reverse."""

from . import closed_form

__all__ = ["closed_form"]
