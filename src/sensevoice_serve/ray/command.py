"""``sensevoice serve --ray`` and ``sensevoice transcribe --ray``: join or start the cluster, run, and leave
it as it was (a local cluster is stopped; on a joined one the application is deleted).

Ray is imported only inside ``ray_cluster``, after the environment it reads at import is set.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from ..checkpoint import resolve_model
from ..errors import SenseVoiceError
from ..settings import Settings
from .cluster import Cluster, ray_cluster
from .resources import EnginePlan, engine_tuned, plan_actors, plan_replicas

if TYPE_CHECKING:
    from ..checkpoint import ModelFiles

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FILE_ERRORS, EXIT_LOAD_FAILED = 0, 1, 1


def run_serve(settings: Settings) -> int:
    """Deploy the server on Ray and keep it up until SIGTERM/SIGINT, which drain the replicas and remove
    the application (and stop the local cluster); exits 1 when the application cannot start."""
    logging.getLogger("sensevoice_serve").setLevel(logging.INFO)
    stop = threading.Event()

    def request_stop(sig: int, frame: FrameType | None) -> None:
        logger.info("%s: stopping", signal.Signals(sig).name)
        stop.set()

    if not settings.ray_address:  # a local model that is missing fails now, not in every replica
        try:
            resolve_model(settings.model)
        except SenseVoiceError as error:
            logger.error("the model cannot be loaded: %s", error)
            return EXIT_LOAD_FAILED
    with ray_cluster(settings) as cluster:
        from ray import serve

        from .serve import APP_NAME, application

        # After ray.init, which installs handlers of its own that end the process at once.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, request_stop)

        plan = plan_replicas(settings, cluster.cpus, cluster.gpus)
        serve.start(http_options={"host": settings.host, "port": settings.port})
        try:
            serve.run(application(settings, plan), name=APP_NAME, route_prefix="/")
        except RuntimeError as error:
            logger.error("the application could not start: %s", error)
            _remove(cluster)
            return EXIT_LOAD_FAILED
        logger.info(
            "ready on http://%s:%d: %d replica(s), each %g CPU(s) and %d GPU(s)",
            settings.host, settings.port, plan.count, plan.cpus, plan.gpus,
        )  # fmt: skip
        while not stop.wait(1.0):
            pass
        _remove(cluster)
    return EXIT_OK


def _remove(cluster: Cluster) -> None:
    """Drain and remove the application; Serve itself too when the cluster is ours."""
    from ray import serve

    from .serve import APP_NAME

    if cluster.local:
        serve.shutdown()
    else:
        serve.delete(APP_NAME)


def transcribe_on_ray(files: list[Path], settings: Settings) -> int:
    """``transcribe --ray``: the plain CLI's outputs and resume, the work on Ray Data; the exit code."""
    model_files = resolve_model(settings.model)
    with ray_cluster(settings) as cluster:
        return _transcribe(files, settings, cluster, model_files)


def _transcribe(files: list[Path], settings: Settings, cluster: Cluster, model_files: ModelFiles) -> int:
    from ..cli import output_options, report_plan
    from ..manifest import plan_resume
    from .parquet import is_parquet, results_file_for, write_parquet

    dataset = Path(settings.output) if settings.output and is_parquet(settings.output) else None
    if dataset is not None:  # made from the plain CLI's results file, kept beside it
        settings = settings.model_copy(update={"output": str(results_file_for(dataset))})
    plan = plan_actors(settings, cluster.cpus, cluster.gpus)
    tuned = engine_tuned(settings, plan, cluster.local)
    keys: dict[Path, str] = {}
    failures = 0
    if settings.output:
        results = Path(settings.output)
        options = output_options(settings, model_files, tuned.dtype)
        bulk = plan_resume(files, results, options, settings.retry_failed)
        report_plan(bulk, results)
        failures = len(bulk.unreadable) + bulk.not_retried
        files, keys = bulk.todo, bulk.keys
    if files:
        failures += _write_results(files, keys, settings, plan, model_files.directory, tuned.max_batch_frames)
    if dataset is not None and Path(settings.output).exists():
        write_parquet(Path(settings.output), dataset)
    return EXIT_FILE_ERRORS if failures else EXIT_OK


def _write_results(
    files: list[Path],
    keys: dict[Path, str],
    settings: Settings,
    plan: EnginePlan,
    model_dir: Path,
    max_batch_frames: int,
) -> int:
    """Run the pipeline into the plain CLI's outputs; the number of files that failed."""
    from ..sinks import open_sinks
    from .data import transcribe_dataset

    failures = 0
    sinks = open_sinks(settings, keys, several=len(files) > 1)
    try:
        for done in transcribe_dataset(files, settings, plan, model_dir, max_batch_frames):
            if done.error is not None:
                failures += 1
                print(f"error: {done.path}: {done.error}", file=sys.stderr)
                for sink in sinks:
                    sink.fail(done.path, done.error)
                continue
            for warning in done.result.warnings:
                print(f"warning: {done.path}: {warning}", file=sys.stderr)
            for sink in sinks:
                sink.write(done.path, done.result)
    finally:
        for sink in sinks:
            sink.close()
    return failures
