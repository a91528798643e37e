"""Find a SenseVoiceSmall model directory (local or from a hub) and load it safely and strictly.

Finding and checking the files needs no torch (the int8 runtime never imports it); loading the torch model
imports it then.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .errors import ModelLoadError
from .features import FrontendConfig
from .tokenizer import TOKENIZER_FILENAME, Tokenizer

if TYPE_CHECKING:
    import torch

    from .model import ModelDimensions, SenseVoiceSmall

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.yaml"
WEIGHTS_FILENAME = "model.pt"
CMVN_FILENAME = "am.mvn"
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.txt"
REQUIRED_FILES = (CONFIG_FILENAME, WEIGHTS_FILENAME, CMVN_FILENAME, TOKENIZER_FILENAME)

MAKE_A_TEST_MODEL = (
    "make a RANDOM-weight test model (meaningless text, real speed): "
    "sensevoice make-test-model tiny models/random-tiny"
)
GET_A_MODEL = (
    "download the real one (ModelScope iic/SenseVoiceSmall or Hugging Face FunAudioLLM/SenseVoiceSmall) "
    f"and pass its directory, or {MAKE_A_TEST_MODEL}"
)
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Which hub serves which id; the owner name tells them apart.
MODELSCOPE_OWNERS = {"iic", "damo"}
HUB_HOSTS = {"modelscope": ("www.modelscope.cn", 443), "huggingface": ("huggingface.co", 443)}


@dataclass(frozen=True)
class ModelFiles:
    directory: Path
    config: dict

    @property
    def weights(self) -> Path:
        return self.directory / WEIGHTS_FILENAME

    @property
    def cmvn(self) -> Path:
        return self.directory / CMVN_FILENAME

    @property
    def tokenizer(self) -> Path:
        bpe = (self.config.get("tokenizer_conf") or {}).get("bpemodel")
        return self.directory / (Path(bpe).name if bpe else TOKENIZER_FILENAME)

    @property
    def frontend(self) -> FrontendConfig:
        return FrontendConfig.from_model_config(self.config.get("frontend_conf") or {})

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file the model is made of."""
        return (self.directory / CONFIG_FILENAME, self.weights, self.cmvn, self.tokenizer)

    @property
    def random_weights(self) -> bool:
        return (self.directory / RANDOM_WEIGHTS_MARKER).exists()


def resolve_model(path_or_hub_id: str | os.PathLike) -> ModelFiles:
    """A local model directory, or a hub id downloaded (or found in the hub's cache)."""
    local = Path(path_or_hub_id).expanduser()
    if local.is_dir():
        directory = local
    elif isinstance(path_or_hub_id, str) and HUB_ID_PATTERN.match(path_or_hub_id) and not local.exists():
        directory = download_from_hub(path_or_hub_id)
    else:
        raise ModelLoadError(f"model directory not found: {local}; {GET_A_MODEL}")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"{directory} is not a SenseVoiceSmall model directory: missing {', '.join(missing)}"
        )
    try:
        config = yaml.safe_load((directory / CONFIG_FILENAME).read_text()) or {}
    except yaml.YAMLError as error:
        raise ModelLoadError(f"{directory / CONFIG_FILENAME} is not valid YAML: {error}") from error
    return ModelFiles(directory=directory, config=config)


def _hub_reachable(hub: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(HUB_HOSTS[hub], timeout=timeout):
            return True
    except OSError:
        return False


def download_from_hub(hub_id: str) -> Path:
    hub = "modelscope" if hub_id.split("/")[0] in MODELSCOPE_OWNERS else "huggingface"
    advice = (
        f"download {hub_id} on a machine that is online and pass its directory with --model DIR "
        f"(or SenseVoice.from_pretrained('/path/to/SenseVoiceSmall')), or {MAKE_A_TEST_MODEL}"
    )
    try:
        if hub == "modelscope":
            from modelscope import snapshot_download
        else:
            from huggingface_hub import snapshot_download
    except ImportError as error:
        raise ModelLoadError(
            f"{hub_id} looks like a {hub} id, but {error.name} is not installed: "
            f"pip install 'sensevoice-serve[hub]', or {advice}"
        ) from error
    cached = _cached_snapshot(hub, hub_id, snapshot_download)
    if cached is not None:
        return cached
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable(hub):
        raise ModelLoadError(f"cannot reach {hub} to download {hub_id} (offline?): {advice}")
    try:
        return Path(snapshot_download(hub_id))
    except Exception as error:  # hub clients raise many unrelated types
        raise ModelLoadError(f"downloading {hub_id} from {hub} failed: {error}; {advice}") from error


def _cached_snapshot(hub: str, hub_id: str, snapshot_download) -> Path | None:
    if hub != "huggingface":
        cache_root = Path(os.environ.get("MODELSCOPE_CACHE", Path.home() / ".cache" / "modelscope" / "hub"))
        for candidate in (cache_root / hub_id, cache_root / "models" / hub_id):
            if (candidate / WEIGHTS_FILENAME).is_file():
                return candidate
        return None
    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not in the cache: any of several hub exceptions
        return None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only (``weights_only``): a checkpoint can never run code on load."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle / zip / unsupported-global errors all mean the same here
        raise ModelLoadError(f"cannot read weights {path}: {error}") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"{path} does not hold a state dict")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse any missing, unexpected or mis-shaped tensor, naming them (the reference silently skips)."""
    problems = []
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    mismatched = [
        f"{key} {tuple(found[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in sorted(expected.keys() & found.keys())
        if found[key].shape != expected[key].shape
    ]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ModelLoadError(
            f"{source} does not match the architecture in config.yaml: " + "; ".join(problems)
        )


def model_dimensions(files: ModelFiles, vocab_size: int) -> ModelDimensions:
    from .model import ModelDimensions

    if files.config.get("encoder", "SenseVoiceEncoderSmall") != "SenseVoiceEncoderSmall":
        raise ModelLoadError(
            f"{files.directory}: encoder {files.config['encoder']!r} is not SenseVoiceEncoderSmall"
        )
    return ModelDimensions.from_config(files.config, files.frontend.feature_dim, vocab_size)


def load_model(
    files: ModelFiles, tokenizer: Tokenizer, device: torch.device, dtype: torch.dtype
) -> SenseVoiceSmall:
    import torch

    from .model import SenseVoiceSmall

    dims = model_dimensions(files, tokenizer.vocab_size)
    with torch.device("meta"):
        model = SenseVoiceSmall(dims)
    state = load_state_dict(files.weights)
    check_state_dict(model.state_dict(), state, files.weights)
    model.load_state_dict(state, strict=True, assign=True)
    if files.random_weights:
        logger.warning("%s holds RANDOM weights: its transcripts are meaningless", files.directory)
    # Never trained here: without gradients no forward records an autograd graph, whoever calls it.
    return model.requires_grad_(False).to(device=device, dtype=dtype).eval()
