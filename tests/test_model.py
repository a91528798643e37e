from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sensevoice_serve.checkpoint import load_state_dict, model_dimensions, resolve_model
from sensevoice_serve.model import SenseVoiceSmall, query_rows, sinusoidal_positions


def _ours(model_dir: Path) -> SenseVoiceSmall:
    files = resolve_model(model_dir)
    model = SenseVoiceSmall(model_dimensions(files, 25055))
    model.load_state_dict(load_state_dict(files.weights), strict=True)
    return model.eval()


def _reference(model_dir: Path):
    funasr_model = pytest.importorskip("funasr.models.sense_voice.model")
    files = resolve_model(model_dir)
    reference = funasr_model.SenseVoiceSmall(
        encoder="SenseVoiceEncoderSmall",
        encoder_conf=files.config["encoder_conf"],
        input_size=files.frontend.feature_dim,
        vocab_size=25055,
    )
    reference.load_state_dict(load_state_dict(files.weights), strict=True)
    return reference.eval()


def _reference_log_probs(
    reference, features: torch.Tensor, lengths: torch.Tensor, language: str, use_itn: bool
):
    """The reference's encoder and CTC head over the four queries, with its own language and text-norm rows.

    The queries are put in order by ``query_rows``, as our model does: that this is the order the reference
    runs them in is checked end to end against funasr's own inference in test_parity_e2e.
    """
    batch = features.shape[0]
    language_rows = torch.full((batch,), reference.lid_dict[language])
    textnorm_rows = torch.full((batch,), reference.textnorm_dict["withitn" if use_itn else "woitn"])
    speech = torch.cat([reference.embed(query_rows(language_rows, textnorm_rows)), features], dim=1)
    encoded, encoded_lengths = reference.encoder(speech, lengths + 4)
    return reference.ctc.log_softmax(encoded), encoded_lengths


def _compare(model_dir: Path, frames: list[int]) -> float:
    ours, reference = _ours(model_dir), _reference(model_dir)
    torch.manual_seed(0)
    features = torch.randn(len(frames), max(frames), 560)
    lengths = torch.tensor(frames)
    worst = 0.0
    with torch.no_grad():
        for language, use_itn in (("auto", True), ("en", False), ("zh", True)):
            mine, mine_lengths = ours(
                features.clone(), lengths, [language] * len(frames), [use_itn] * len(frames)
            )
            theirs, their_lengths = _reference_log_probs(
                reference, features.clone(), lengths.clone(), language, use_itn
            )
            assert mine_lengths.tolist() == their_lengths.tolist()
            for i, n in enumerate(mine_lengths.tolist()):
                scale = theirs[i, :n].abs().max()
                worst = max(worst, float((mine[i, :n] - theirs[i, :n]).abs().max() / scale))
    return worst


@pytest.mark.parity
def test_logits_match_reference_tiny(tiny_model_dir: Path) -> None:
    relative = _compare(tiny_model_dir, [57, 40, 9])
    print(f"tiny: max relative |Δ logits| = {relative:.2e}")
    assert relative <= 1e-4


@pytest.mark.parity
@pytest.mark.slow
def test_logits_match_reference_full(full_model_dir: Path) -> None:
    relative = _compare(full_model_dir, [180, 97])
    print(f"full: max relative |Δ logits| = {relative:.2e}")
    assert relative <= 1e-4


def test_positions_start_at_one_with_sin_then_cos() -> None:
    encoding = sinusoidal_positions(3, 560, torch.device("cpu"))
    assert encoding.shape == (3, 560)
    assert encoding[0, 0] == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert encoding[0, 280] == pytest.approx(torch.cos(torch.tensor(1.0)).item())


def test_padding_does_not_change_results(tiny_model_dir: Path) -> None:
    model = _ours(tiny_model_dir)
    torch.manual_seed(1)
    features = torch.randn(1, 30, 560)
    padded = torch.cat([features, 100 * torch.randn(1, 20, 560)], dim=1)
    with torch.no_grad():
        alone, _ = model(features, torch.tensor([30]), ["auto"], [True])
        with_padding, _ = model(padded, torch.tensor([30]), ["auto"], [True])
    assert torch.allclose(alone[0], with_padding[0, :34], atol=1e-4 * alone.abs().max().item())


def test_every_parameter_matters(tiny_model_dir: Path) -> None:
    """Zeroing any one tensor changes the output: no parameter is loaded but ignored."""
    model = _ours(tiny_model_dir)
    torch.manual_seed(2)
    features, lengths = torch.randn(1, 12, 560), torch.tensor([12])
    with torch.no_grad():
        baseline, _ = model(features, lengths, ["en"], [True])
        for name, parameter in model.named_parameters():
            saved = parameter.clone()
            parameter.zero_()
            changed, _ = model(features, lengths, ["en"], [True])
            parameter.copy_(saved)
            assert not torch.allclose(changed, baseline), name
