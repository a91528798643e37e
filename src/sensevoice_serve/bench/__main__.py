"""``python -m sensevoice_serve.bench``: the fresh process whose start-up the cold-start figures time."""

import sys

from .cold_start import cold_start_child

cold_start_child(sys.argv[1:])
