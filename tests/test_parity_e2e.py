"""End to end from the same 16 kHz samples: funasr's AutoModel and ours give identical tokens and raw text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sensevoice_serve.audio import decode_audio
from sensevoice_serve.pipeline import SenseVoice

from .conftest import shared_audio

pytestmark = pytest.mark.parity

CLIPS = ["jfk.flac", "zh_sample.wav", "multilingual.mp3"]
OPTIONS = [("auto", True, False), ("auto", False, False), ("en", True, True), ("zh", False, False)]


@pytest.fixture()
def reference_factory(monkeypatch: pytest.MonkeyPatch):
    """Builds funasr's AutoModel with dither off, recording the token ids it decodes."""
    auto_model = pytest.importorskip("funasr").AutoModel
    tokenizer_class = pytest.importorskip("funasr.tokenizer.sentencepiece_tokenizer").SentencepiecesTokenizer
    seen: list[list[int]] = []
    decode = tokenizer_class.decode

    def recording_decode(self, token_ids, **kwargs):
        seen.append(list(token_ids))
        return decode(self, token_ids, **kwargs)

    # AutoModel restores per-call copies of its kwargs, so patch the class, not an instance.
    monkeypatch.setattr(tokenizer_class, "decode", recording_decode)
    threads = torch.get_num_threads()  # funasr changes the global thread count

    def build(model_dir: Path):
        # The reference dithers by default, which makes features random.
        model = auto_model(
            model=str(model_dir),
            device="cpu",
            disable_update=True,
            log_level="ERROR",
            frontend_conf={"dither": 0.0},
        )
        assert model.kwargs["frontend"].dither == 0.0
        return model, seen

    yield build
    torch.set_num_threads(threads)


def _check(model_dir: Path, reference_factory) -> None:
    ours = SenseVoice.from_pretrained(model_dir, device="cpu", dtype="fp32")
    reference, seen = reference_factory(model_dir)
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
            # The reference runs a whole file as one utterance: keep ours from segmenting the 30 s clip.
            mine = ours.transcribe(
                samples, language=language, use_itn=use_itn, ban_emo_unk=ban_emo_unk, max_segment_seconds=120
            )[0]
            label = f"{name} language={language} itn={use_itn} ban={ban_emo_unk}"
            assert [t.id for t in mine.tokens] == [
                i for i in seen[0] if ours.tokenizer.tag_name(i) is None
            ], label
            assert mine.raw_text == theirs, label


def test_tokens_and_raw_text_match_reference_tiny(tiny_model_dir: Path, reference_factory) -> None:
    _check(tiny_model_dir, reference_factory)


@pytest.mark.slow
def test_tokens_and_raw_text_match_reference_full(full_model_dir: Path, reference_factory) -> None:
    _check(full_model_dir, reference_factory)
