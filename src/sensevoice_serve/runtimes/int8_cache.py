"""Where the int8 model is kept: built from ``model.pt`` on first use, then only loaded.

``<cache dir>/int8/<directory>-<key>/`` holds the two graphs with their data files and ``manifest.json``.
``<directory>`` hashes the model directory's path, so that older builds of the same model are found and
removed; ``<key>`` hashes everything the files depend on: the weights file (path, size, modification time),
config.yaml, the vocabulary size, the versions of onnxruntime, onnx and torch, the weight type and the
CPU's instruction sets (the pre-packed weights are laid out for this CPU's kernels).

A build happens in a staging directory beside the entry and is renamed into place with its manifest written
last, so an entry is whole or absent; a lock file makes a second process wait for the first build instead
of repeating it. An entry whose manifest or files do not match is rebuilt with a one-line notice. Users'
cache directories may be unwritable: then the model is built into a temporary directory for this process.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..checkpoint import CONFIG_FILENAME
from ..errors import ModelLoadError
from . import cpu_flags, int8_available

if TYPE_CHECKING:
    from ..checkpoint import ModelFiles
    from ..tokenizer import Tokenizer

try:
    import fcntl
except ImportError:  # Windows: no lock, and a second build at once is wasted work, never a broken entry
    fcntl = None

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of what int8_build writes: a change of recipe changes every key
MANIFEST = "manifest.json"
CACHE_DIR_ENV = "SENSEVOICE_CACHE_DIR"
# Instruction sets that decide onnxruntime's kernels, hence the pre-packed weight layout.
ISA_FLAGS = (
    "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
    "asimd", "asimddp", "i8mm", "sve",
)  # fmt: skip
SIGNED_WEIGHT_FLAGS = ("avx512_vnni", "avx_vnni", "asimddp")
# The two graphs an entry holds (built by int8_build, run by int8), their inputs and outputs.
ENCODER, CTC = "encoder", "ctc"
ENCODER_OUTPUT = "encoded"
CTC_INPUT, CTC_OUTPUT = "frames", "logits"
GRAPH_FILES = {name: (f"{name}.onnx", f"{name}.data") for name in (ENCODER, CTC)}


def default_cache_dir() -> Path:
    """``$SENSEVOICE_CACHE_DIR``, else ``sensevoice-serve`` in ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sensevoice-serve"


def signed_weights(flags: set[str]) -> bool:
    return any(flag in flags for flag in SIGNED_WEIGHT_FLAGS)


def identity(files: ModelFiles, tokenizer: Tokenizer) -> dict:
    """Everything the built files depend on; any change means another entry."""
    weights = files.weights.resolve()
    stat = weights.stat()
    flags = cpu_flags()
    return {
        "format": FORMAT_VERSION,
        "weights": str(weights),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "config": hashlib.sha256((files.directory / CONFIG_FILENAME).read_bytes()).hexdigest(),
        "vocab_size": tokenizer.vocab_size,
        "versions": {name: metadata.version(name) for name in ("onnxruntime", "onnx", "torch")},
        "signed_weights": signed_weights(flags),
        "cpu": sorted(flag for flag in ISA_FLAGS if flag in flags),
    }


def entry_name(ident: dict) -> str:
    directory = hashlib.sha256(str(Path(ident["weights"]).parent).encode()).hexdigest()[:12]
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return f"{directory}-{key}"


def entry_problem(entry: Path, ident: dict) -> str | None:
    """Why ``entry`` cannot be used (None: it can)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as error:
        return f"unreadable manifest: {error}"
    if not isinstance(manifest, dict) or manifest.get("identity") != ident:
        return "built from other weights or another runtime version"
    for name, size in (manifest.get("files") or {}).items():
        path = entry / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or truncated"
    return None


def ensure_int8_model(files: ModelFiles, tokenizer: Tokenizer, cache_dir: str | Path | None = None) -> Path:
    """The directory of this model's int8 graphs, built first if there is none that matches."""
    if not int8_available():
        raise ModelLoadError(
            "dtype int8 needs onnxruntime and onnx: pip install onnxruntime onnx (or use --dtype fp32)"
        )
    ident = identity(files, tokenizer)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entry = root / "int8" / entry_name(ident)
    if entry_problem(entry, ident) is None:
        return entry
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = open(entry.parent / f"{entry.name}.lock", "a")  # noqa: SIM115 (held below)
    except OSError as error:
        return _build_temporary(files, tokenizer, ident, error)
    with lock:
        _wait_for(lock)
        problem = entry_problem(entry, ident)  # another process may have built it while this one waited
        if problem is None:
            return entry
        if problem != "missing":
            logger.warning("the cached int8 model %s is unusable (%s): rebuilding it", entry, problem)
            shutil.rmtree(entry, ignore_errors=True)
        _remove_stale(entry)
        _build(files, tokenizer, ident, entry)
    return entry


def discard(entry: Path, reason: str) -> None:
    """Remove an entry that failed to load, so that the next ``ensure_int8_model`` rebuilds it."""
    logger.warning("the cached int8 model %s failed to load (%s): rebuilding it", entry, reason)
    shutil.rmtree(entry, ignore_errors=True)


def _build(files: ModelFiles, tokenizer: Tokenizer, ident: dict, entry: Path) -> None:
    logger.warning(
        "building the int8 model of %s once (weights %s), into %s",
        files.directory, "signed" if ident["signed_weights"] else "unsigned", entry,
    )  # fmt: skip
    staging = Path(tempfile.mkdtemp(prefix=f"{entry.name}.partial.", dir=entry.parent))
    try:
        from .int8_build import build_int8_model  # torch: only when there is something to build

        build_int8_model(files, tokenizer, staging, ident["signed_weights"])
        _write_manifest(staging, ident)
        try:
            staging.rename(entry)
        except OSError:
            if entry_problem(entry, ident) is not None:  # not another process's good build: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_manifest(directory: Path, ident: dict) -> None:
    sizes = {name: (directory / name).stat().st_size for pair in GRAPH_FILES.values() for name in pair}
    for name in sizes:
        with open(directory / name, "rb") as written:
            os.fsync(written.fileno())  # the data is on disk before the manifest says it is whole
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps({"identity": ident, "files": sizes}, indent=2))
    with open(manifest, "rb") as written:
        os.fsync(written.fileno())


def _remove_stale(entry: Path) -> None:
    """Other builds of the same model directory: older weights, runtime versions or CPU."""
    directory_hash = entry.name.split("-")[0]
    for stale in entry.parent.glob(f"{directory_hash}-*"):
        if stale.name.startswith(entry.name) or ".partial." in stale.name:
            continue
        if stale.is_dir():
            logger.warning("removing the stale int8 model %s (older weights or runtime)", stale)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)  # its lock file


def _build_temporary(files: ModelFiles, tokenizer: Tokenizer, ident: dict, error: OSError) -> Path:
    logger.warning(
        "cannot write the int8 cache (%s): building into a temporary directory for this process; "
        "set %s to a writable directory to keep it",
        error, CACHE_DIR_ENV,
    )  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="sensevoice-int8-"))
    atexit.register(shutil.rmtree, scratch, True)
    entry = scratch / entry_name(ident)
    _build(files, tokenizer, ident, entry)
    return entry


def _wait_for(lock: IO) -> None:
    """Hold ``lock`` until it is closed; the operating system releases it if the holder dies."""
    if fcntl is not None:
        fcntl.flock(lock, fcntl.LOCK_EX)
