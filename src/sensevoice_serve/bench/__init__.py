"""``sensevoice bench``: this machine measured the way users compare GPUs, through the path users get.

Requests run through the server's own ``Service`` exactly as a route drives it, only without HTTP, so the
figures are those users see and the parts reported are those of real requests. Per clip length: cold start
in a fresh process, warm latency percentiles with their breakdown, throughput at several concurrencies, peak
memory and every error seen. ``--tune`` measures settings candidates and writes the best as the profile
serve and transcribe load; ``--compare A.json B.json`` sets two runs side by side.

The modules, in reading order: ``material`` (the clips and checkpoint), ``drive`` (requests through the
Service), ``memory`` (peak RSS and GPU memory), ``cold_start`` (a fresh process, ``__main__``),
``layout`` and ``provenance`` (what a report holds), ``run`` (one bench run), ``report`` (markdown),
``tune`` (``--tune``), ``compare`` (``--compare``), ``command`` (the flags). Importing this package stays
cheap: the CLI imports it to register the command.
"""

from .command import register

__all__ = ["register"]
