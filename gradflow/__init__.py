"""The `gradflow` command line, on top of `flows` (the simulator) and `analysis` (the checks).

gradflow run ...      one flow, saved and plotted
gradflow check        every analysis check with its measured value and threshold
gradflow reproduce    every figure and table of the paper (--quick: the small grids)
"""

from importlib import metadata

from ._cli import build_parser, main

try:
    __version__ = metadata.version("gradflow")  # set once, in pyproject.toml
except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "unknown"

__all__ = ["__version__", "build_parser", "main"]
