from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from sensevoice_serve.audio import decode_audio
from sensevoice_serve.errors import AudioDecodeError, InvalidOption, ModelLoadError
from sensevoice_serve.pipeline import BatchTimings, SenseVoice, Utterance

from .conftest import SHARED_AUDIO, shared_audio


def test_transcribes_every_shared_recording_in_input_order(tiny_engine: SenseVoice) -> None:
    paths = sorted(SHARED_AUDIO.glob("*.*[!d]"))  # every recording, not the README
    if not paths:
        pytest.skip("shared recordings missing")
    results = tiny_engine.transcribe(paths)
    assert [r.source for r in results] == [str(p) for p in paths]
    for result, path in zip(results, paths, strict=True):
        assert result.duration == pytest.approx(decode_audio(path).duration)
        if result.duration <= 30:  # short files are one utterance, as the reference runs them
            whole = (0, pytest.approx(result.duration, abs=1e-3))
            assert [(s.start, s.end) for s in result.segments] == [whole]
        assert all(0 <= s.start < s.end <= result.duration + 1e-3 for s in result.segments)
        assert all(0 <= t.start <= t.end <= result.duration + 0.06 for t in result.tokens)
        assert all(a.start <= b.start for a, b in zip(result.tokens, result.tokens[1:], strict=False))


def test_inputs_as_path_bytes_file_and_array_agree(tiny_engine: SenseVoice) -> None:
    path = shared_audio("zh_sample.wav")
    data = path.read_bytes()
    inputs = [path, str(path), data, io.BytesIO(data), decode_audio(path).samples]
    results = tiny_engine.transcribe(inputs)
    assert len({r.raw_text for r in results}) == 1


def test_batch_invariance_with_real_padding(tiny_engine: SenseVoice) -> None:
    clips = [decode_audio(shared_audio(n)).samples for n in ("jfk.flac", "zh_sample.wav", "hotwords.mp3")]
    alone = [tiny_engine.run_batch([Utterance(clip)])[0] for clip in clips]
    tiny_engine.forward_batch_sizes.clear()
    together = tiny_engine.run_batch([Utterance(clip) for clip in clips])
    assert tiny_engine.forward_batch_sizes == [3], "the mixed-length clips must run as one padded forward"
    assert len({len(c) for c in clips}) == 3
    for single, batched in zip(alone, together, strict=True):
        assert [t.id for t in single.tokens] == [t.id for t in batched.tokens]
        assert single.raw_text == batched.raw_text


def test_batch_invariance_of_logits(tiny_engine: SenseVoice) -> None:
    clips = [decode_audio(shared_audio(n)).samples for n in ("jfk.flac", "zh_sample.wav")]
    with torch.inference_mode():
        feats, lengths = tiny_engine.features(clips)
        batched, batched_lengths = tiny_engine.model(feats, lengths, ["auto"] * 2, [True] * 2)
        for index, clip in enumerate(clips):
            feat, length = tiny_engine.features([clip])
            alone, _ = tiny_engine.model(feat, length, ["auto"], [True])
            n = int(batched_lengths[index])
            assert alone.shape[1] == n
            scale = alone.abs().max()
            assert ((alone[0] - batched[index, :n]).abs().max() / scale) <= 1e-4


def test_run_utterances_batches_within_the_budget(tiny_engine: SenseVoice) -> None:
    clips = [np.zeros(int(16000 * s), dtype=np.float32) for s in (6, 6, 6, 5.5, 5, 2, 2, 1)]
    tiny_engine.forward_batch_sizes.clear()
    segments = tiny_engine.run_utterances([Utterance(c) for c in clips], max_batch_frames=250)
    assert [s.end for s in segments] == [6, 6, 6, 5.5, 5, 2, 2, 1]  # input order, whatever the batches
    # 6+6 | 6+5.5 | 5 (beside 2 s it would be mostly padding) | 2+2 | 1
    assert tiny_engine.forward_batch_sizes == [2, 2, 1, 2, 1]


def test_options_are_validated(tiny_engine: SenseVoice) -> None:
    with pytest.raises(InvalidOption, match="unsupported language"):
        tiny_engine.transcribe(np.zeros(16000, dtype=np.float32), language="klingon")


def test_bad_audio_raises_the_clear_error(tiny_engine: SenseVoice) -> None:
    with pytest.raises(AudioDecodeError):
        tiny_engine.transcribe(b"definitely not audio")


def test_tiny_audio_does_not_crash(tiny_engine: SenseVoice) -> None:
    result = tiny_engine.transcribe(np.zeros(100, dtype=np.float32))[0]
    # No feature frame: only the four query frames answer (random weights may answer with words).
    assert len(result.tokens) <= 4
    assert all(t.start == t.end == 0 for t in result.tokens)


def test_from_pretrained_reports_bad_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        SenseVoice.from_pretrained(tmp_path)


def test_auto_device_and_dtype_on_this_machine(tiny_model_dir: Path) -> None:
    engine = SenseVoice.from_pretrained(tiny_model_dir)
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert engine.device == expected
    assert engine.random_weights


def test_a_batch_started_here_can_be_finished_in_another_thread(tiny_engine: SenseVoice) -> None:
    clips = [decode_audio(shared_audio(n)).samples for n in ("jfk.flac", "zh_sample.wav")]
    expected = tiny_engine.run_batch([Utterance(clip) for clip in clips])
    timings = BatchTimings()
    scored = tiny_engine.start_batch([Utterance(clip) for clip in clips], timings)
    assert timings.features > 0 and timings.model > 0
    scoring = timings.decoding
    with ThreadPoolExecutor(1) as other_thread:
        segments = other_thread.submit(scored.finish).result()
    assert timings.decoding > scoring  # the CPU half is counted as decoding too
    assert [s.raw_text for s in segments] == [s.raw_text for s in expected]
    assert [[t.id for t in s.tokens] for s in segments] == [[t.id for t in s.tokens] for s in expected]
