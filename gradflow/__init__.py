"""The `gradflow` command line, on top of `flows` (the simulator) and `analysis` (the checks).

gradflow run ...      one flow, saved and plotted
gradflow check        every analysis check with its measured value and threshold
gradflow reproduce    every figure and table of the paper (--quick: the small grids)
"""

from ._cli import build_parser, main

__all__ = ["build_parser", "main"]
