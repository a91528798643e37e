"""The ONNX export: what sherpa-onnx reads is there, and sherpa-onnx decodes the same tokens as our engine."""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pytest
import torch

from sensevoice_serve.audio import SAMPLE_RATE, decode_audio
from sensevoice_serve.decoding import frame_time
from sensevoice_serve.queries import language_row, textnorm_row
from sensevoice_serve.scoring import collapse, ctc_argmax

from .conftest import shared_audio

pytestmark = pytest.mark.bench

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
sherpa_onnx = pytest.importorskip("sherpa_onnx")

CLIPS = ["jfk.flac", "zh_sample.wav", "hotwords.mp3", "multilingual.mp3", "stereo_diarization.wav"]
# sherpa-onnx's names for the language choices; "" means auto.
LANGUAGE_OPTIONS = [("", "auto", True), ("en", "en", False), ("zh", "zh", True)]


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from sensevoice_serve.export import export_onnx

    return export_onnx(tiny_model_dir, tmp_path_factory.mktemp("onnx"), int8=True)


def _metadata(path: Path) -> dict[str, str]:
    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


def test_metadata_tokens_and_signature_are_what_sherpa_reads(exported, tiny_engine) -> None:
    from sensevoice_serve.features import load_cmvn

    for path in (exported.model, exported.int8_model):
        metadata = _metadata(path)
        assert metadata["vocab_size"] == str(tiny_engine.tokenizer.vocab_size)
        assert (metadata["lfr_window_size"], metadata["lfr_window_shift"]) == ("7", "6")
        assert metadata["normalize_samples"] == "0"
        assert metadata["blank_id"] == "0"
        assert "Nano" not in metadata["comment"]  # would switch sherpa-onnx to another model family
        for name in ("auto", "zh", "en", "yue", "ja", "ko"):
            assert metadata[f"lang_{name}"] == str(language_row(name))
        assert (metadata["with_itn"], metadata["without_itn"]) == (
            str(textnorm_row(True)),
            str(textnorm_row(False)),
        )
        shift, scale = load_cmvn(tiny_engine.files.cmvn)
        np.testing.assert_allclose([float(v) for v in metadata["neg_mean"].split(",")], shift)
        np.testing.assert_allclose([float(v) for v in metadata["inv_stddev"].split(",")], scale)

    session = onnxruntime.InferenceSession(str(exported.model))
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("x", "tensor(float)"),
        ("x_length", "tensor(int32)"),
        ("language", "tensor(int32)"),
        ("text_norm", "tensor(int32)"),
    ]
    assert [o.name for o in session.get_outputs()] == ["logits"]

    lines = exported.tokens.read_text(encoding="utf-8").splitlines()
    assert len(lines) == tiny_engine.tokenizer.vocab_size
    assert lines[0] == f"{tiny_engine.tokenizer.piece(0)} 0"
    en_id = tiny_engine.tokenizer.languages["en"]
    assert lines[en_id] == f"<|en|> {en_id}"


def test_onnx_logits_match_the_model_on_a_padded_batch(exported, tiny_engine) -> None:
    samples = [decode_audio(shared_audio(name)).samples for name in ("jfk.flac", "zh_sample.wav")]
    features, lengths = tiny_engine.features(samples)
    languages, itn = ["en", "auto"], [True, False]
    with torch.inference_mode():
        encoded, encoded_lengths = tiny_engine.model.encode(features, lengths, languages, itn)
        expected = tiny_engine.model.ctc.logits(encoded).numpy()
    session = onnxruntime.InferenceSession(str(exported.model))
    (logits,) = session.run(
        None,
        {
            "x": features,
            "x_length": lengths.astype(np.int32),
            "language": np.array([language_row(language) for language in languages], dtype=np.int32),
            "text_norm": np.array([textnorm_row(use_itn) for use_itn in itn], dtype=np.int32),
        },
    )
    assert logits.shape == expected.shape
    for row, length in enumerate(encoded_lengths.tolist()):  # padding frames are never decoded
        np.testing.assert_allclose(logits[row, :length], expected[row, :length], atol=1e-4, rtol=1e-4)


def _sherpa_results(model: Path, tokens: Path, language: str, use_itn: bool, clips: list[np.ndarray]):
    recognizer = sherpa_onnx.OfflineRecognizer.from_sense_voice(
        model=str(model), tokens=str(tokens), num_threads=1, language=language, use_itn=use_itn
    )
    streams = []
    for samples in clips:
        stream = recognizer.create_stream()
        stream.accept_waveform(SAMPLE_RATE, samples)
        streams.append(stream)
    recognizer.decode_streams(streams)  # a padded batch, as a sherpa-onnx server runs them
    return [stream.result for stream in streams]


def _piece(engine, token_id: int) -> str:
    # sherpa-onnx shows sentencepiece's word-start mark as the space it stands for.
    return engine.tokenizer.piece(token_id).replace("\u2581", " ")


@pytest.mark.parametrize(("sherpa_language", "language", "use_itn"), LANGUAGE_OPTIONS)
def test_sherpa_onnx_gives_the_same_tokens_as_our_engine(
    exported, tiny_engine, sherpa_language: str, language: str, use_itn: bool
) -> None:
    clips = [decode_audio(shared_audio(name)).samples for name in CLIPS]
    results = _sherpa_results(exported.model, exported.tokens, sherpa_language, use_itn, clips)
    for name, samples, result in zip(CLIPS, clips, results, strict=True):
        # Every emitted token of our engine, tags included: sherpa-onnx reports the first three as
        # language, emotion and event, drops the fourth, and returns the rest with their times.
        with torch.inference_mode():
            features, lengths = tiny_engine.features([samples])
            encoded, encoded_lengths = tiny_engine.model.encode(features, lengths, [language], [use_itn])
            (best,) = ctc_argmax(tiny_engine.model.ctc, encoded, encoded_lengths, [None])
        spikes = collapse(best)
        ours = [_piece(tiny_engine, spike.token_id) for spike in spikes]
        label = f"{name} language={language or 'auto'} itn={use_itn}"
        assert [result.lang, result.emotion, result.event] == ours[:3], label
        assert list(result.tokens) == ours[4:], label
        np.testing.assert_allclose(
            result.timestamps, [frame_time(spike.first_frame) for spike in spikes[4:]], atol=1e-4
        )
        # The same spikes are what the engine's public API returns (tags removed).
        (transcription,) = tiny_engine.transcribe(
            samples, language=language, use_itn=use_itn, max_segment_seconds=120
        )
        tag_free = [s.token_id for s in spikes if tiny_engine.tokenizer.tag_name(s.token_id) is None]
        assert [token.id for token in transcription.tokens] == tag_free, label


def test_int8_export_loads_in_sherpa_onnx_and_stays_close_to_float(exported) -> None:
    names = CLIPS[:3]
    clips = [decode_audio(shared_audio(name)).samples for name in names]
    full = _sherpa_results(exported.model, exported.tokens, "", True, clips)
    quantized = _sherpa_results(exported.int8_model, exported.tokens, "", True, clips)
    for name, reference, result in zip(names, full, quantized, strict=True):
        assert result.tokens, name
        # Random weights leave many near-ties between tokens, so int8 rounding flips a few of them.
        similarity = difflib.SequenceMatcher(a=reference.tokens, b=result.tokens).ratio()
        assert similarity > 0.8, f"{name}: int8 tokens only {similarity:.0%} like float32"


def test_export_command_writes_the_files(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    import argparse

    from sensevoice_serve import export

    parser = argparse.ArgumentParser()
    export.register(parser.add_subparsers())
    args = parser.parse_args(
        ["export-onnx", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path), "--no-int8"]
    )
    assert args.handler(args) == 0
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "tokens.txt").is_file()
    assert not (tmp_path / "model.int8.onnx").exists()
    assert "RANDOM" in capsys.readouterr().err
