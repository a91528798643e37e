"""The JSON report's layout, which ``--compare`` reads back without loading the engine."""

REPORT_VERSION = 1  # so --compare can refuse files it cannot read
BENCH_REPORT, TUNE_REPORT = "sensevoice-bench", "sensevoice-bench-tune"
# The parts of a request's time, named as in the server's Timings; their sum is about the end-to-end time.
PARTS = ("decode", "queue", "features", "model", "decoding")
