"""End to end from the same 16 kHz samples: funasr's AutoModel and ours give identical tokens and raw text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sensevoice_serve.audio import decode_audio

from sensevoice_serve.pipeline import SenseVoice

from .conftest import shared_audio

pytestmark = pytest.mark.parity

CLIPS = ["jfk.flac", "zh_sample.wav", "multilingual.mp3"]
OPTIONS = [("auto", True, False), ("auto", False, False), ("en", True, True), ("zh", False, False)]


def _reference(model_dir: Path):
    auto_model = pytest.importorskip("funasr").AutoModel
    model = auto_model(model=str(model_dir), device="cpu", disable_update=True, log_level="ERROR")
    model.kwargs["frontend"].dither = 0.0  # the reference dithers by default: not comparable
    tokenizer = model.kwargs["tokenizer"]
    seen: list[list[int]] = []
    decode = tokenizer.decode

    def recording_decode(token_ids, **kwargs):
        seen.append(list(token_ids))
        return decode(token_ids, **kwargs)

    tokenizer.decode = recording_decode
    return model, seen


def _check(model_dir: Path) -> None:
    ours = SenseVoice.from_pretrained(model_dir, device="cpu", dtype="fp32")
    reference, seen = _reference(model_dir)
    for name in CLIPS:
        samples = decode_audio(shared_audio(name)).samples
        for language, use_itn, ban_emo_unk in OPTIONS:
            seen.clear()
            theirs = reference.generate(
                input=[samples.astype(np.float32)],
                language=language,
                use_itn=use_itn,
                ban_emo_unk=ban_emo_unk,
                batch_size=1,
                disable_pbar=True,
            )[0]["text"]
            mine = ours.transcribe(samples, language=language, use_itn=use_itn, ban_emo_unk=ban_emo_unk)[0]
            label = f"{name} language={language} itn={use_itn} ban={ban_emo_unk}"
            assert [t.id for t in mine.tokens] == [
                i for i in seen[0] if ours.tokenizer.tag_name(i) is None
            ], label
            assert mine.raw_text == theirs, label


def test_tokens_and_raw_text_match_reference_tiny(tiny_model_dir: Path) -> None:
    _check(tiny_model_dir)


@pytest.mark.slow
def test_tokens_and_raw_text_match_reference_full(full_model_dir: Path) -> None:
    _check(full_model_dir)
