import sys

from ._cli import program

sys.exit(program())
