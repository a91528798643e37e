from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sensevoice_serve import checkpoint
from sensevoice_serve.checkpoint import load_model, load_state_dict, resolve_model
from sensevoice_serve.errors import ModelLoadError
from sensevoice_serve.tokenizer import Tokenizer


@pytest.fixture()
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


def _load(directory: Path):
    files = resolve_model(directory)
    return load_model(files, Tokenizer(files.tokenizer), torch.device("cpu"), torch.float32)


def test_random_checkpoint_has_official_layout(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {
        "config.yaml",
        "model.pt",
        "am.mvn",
        "chn_jpn_yue_eng_ko_spectok.bpe.model",
        "configuration.json",
    } <= names
    files = resolve_model(tiny_model_dir)
    assert files.random_weights
    assert files.frontend.feature_dim == 560


def test_every_tensor_is_randomised(tiny_model_dir: Path) -> None:
    state = load_state_dict(tiny_model_dir / "model.pt")
    for name, tensor in state.items():
        # No framework default survives: norms are not all ones, biases not all zeros.
        assert tensor.std() > 0.01, name
        assert torch.isfinite(tensor).all(), name


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module_prefix"])
def test_wrapped_checkpoints_load(model_copy: Path, wrapper: str) -> None:
    state = torch.load(model_copy / "model.pt", weights_only=True)
    reference = _load(model_copy).state_dict()
    if wrapper == "module_prefix":
        wrapped = {f"module.{k}": v for k, v in state.items()}
    else:
        wrapped = {wrapper: state, "epoch": 3}
    torch.save(wrapped, model_copy / "model.pt")
    loaded = _load(model_copy).state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_missing_unexpected_and_misshaped_keys_are_named(model_copy: Path) -> None:
    state = torch.load(model_copy / "model.pt", weights_only=True)
    del state["encoder.tp_norm.bias"]
    state["encoder.extra.weight"] = torch.zeros(3)
    state["ctc.ctc_lo.bias"] = torch.zeros(7)
    torch.save(state, model_copy / "model.pt")
    with pytest.raises(ModelLoadError) as error:
        _load(model_copy)
    message = str(error.value)
    assert "missing: encoder.tp_norm.bias" in message
    assert "unexpected: encoder.extra.weight" in message
    assert "wrong shape: ctc.ctc_lo.bias (7,) (expected (25055,))" in message


def test_config_sizes_drive_the_architecture(model_copy: Path) -> None:
    config = (model_copy / "config.yaml").read_text().replace("num_blocks: 3", "num_blocks: 4")
    (model_copy / "config.yaml").write_text(config)
    with pytest.raises(ModelLoadError, match=r"missing: encoder\.encoders\.2\."):
        _load(model_copy)


def test_pickled_code_is_never_run(model_copy: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Payload()}, model_copy / "model.pt")
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        _load(model_copy)


def test_missing_files_are_listed(model_copy: Path) -> None:
    (model_copy / "chn_jpn_yue_eng_ko_spectok.bpe.model").unlink()
    (model_copy / "am.mvn").unlink()
    with pytest.raises(ModelLoadError, match=r"missing am\.mvn, chn_jpn_yue_eng_ko_spectok\.bpe\.model"):
        resolve_model(model_copy)


def test_nonexistent_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model directory not found") as error:
        resolve_model(tmp_path / "nope")
    assert "iic/SenseVoiceSmall" in str(error.value)  # where to get the real one
    assert "sensevoice make-test-model tiny" in str(error.value)  # and how to make one here


@pytest.mark.parametrize("hub_id", ["iic/SenseVoiceSmall", "FunAudioLLM/SenseVoiceSmall"])
def test_hub_id_offline_fails_at_once_with_advice(
    hub_id: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint, "_hub_reachable", lambda hub, timeout=3.0: False)
    monkeypatch.setattr(checkpoint, "_cached_snapshot", lambda hub, hub_id, download: None)
    try:
        with pytest.raises(ModelLoadError, match="--model DIR") as error:
            resolve_model(hub_id)
    except ModuleNotFoundError:  # pragma: no cover - neither hub client importable
        pytest.skip("hub clients not installed")
    assert hub_id in str(error.value) and "make-test-model" in str(error.value)
