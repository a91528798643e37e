"""The int8 runtime through the public API: the same path as fp32 (features, batching, VAD, decoding), close
to fp32's output and no further from it than sherpa-onnx's int8 model, refused on a GPU, and what ``auto``
picks on a CPU with an int8 dot product."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensevoice_serve.bench.fidelity import measure_fidelity, onnx_logits, recording_pieces, runtime_logits
from sensevoice_serve.device import resolve_dtype
from sensevoice_serve.errors import InvalidOption
from sensevoice_serve.pipeline import SenseVoice
from sensevoice_serve.runtimes import int8_available, int8_preferred
from sensevoice_serve.tuning import GIB, GpuInfo, MachineInfo, resolve_tuned_settings

from .conftest import shared_audio

needs_int8 = pytest.mark.skipif(not int8_available(), reason="the int8 runtime needs onnxruntime and onnx")
RECORDINGS = ["jfk.flac", "zh_sample.wav", "hotwords.mp3", "multilingual.mp3", "stereo_diarization.wav"]
# Random tiny weights, quantized: the floors catch a misplaced input (query rows, lengths, padding), which
# drops agreement to chance, not quantization noise (measured: ~0.93 frames, ~0.03 logits error).
MIN_FRAME_AGREEMENT = 0.85
MAX_LOGITS_ERROR = 0.1


@pytest.fixture(scope="module")
def int8_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SenseVoice:
    if not int8_available():
        pytest.skip("the int8 runtime needs onnxruntime and onnx")
    cache = tmp_path_factory.mktemp("int8-cache")
    return SenseVoice.from_pretrained(tiny_model_dir, device="cpu", dtype="int8", cache_dir=cache)


@pytest.fixture(scope="module")
def pieces() -> list:
    return recording_pieces([shared_audio(name) for name in RECORDINGS])


def test_int8_transcribes_every_recording_as_fp32_does(
    int8_engine: SenseVoice, tiny_engine: SenseVoice
) -> None:
    paths = [shared_audio(name) for name in RECORDINGS]
    int8_results = int8_engine.transcribe(paths, language="auto")
    fp32_results = tiny_engine.transcribe(paths, language="auto")
    assert int8_engine.dtype == "int8"
    for int8_result, fp32_result in zip(int8_results, fp32_results, strict=True):
        # The VAD and the segmentation do not depend on the runtime: the same segments, each decoded.
        assert [(s.start, s.end) for s in int8_result.segments] == [
            (s.start, s.end) for s in fp32_result.segments
        ]
        for segment in int8_result.segments:
            assert all(segment.start <= t.start <= t.end <= segment.end for t in segment.tokens)


def test_int8_logits_stay_close_to_fp32_on_every_recording(
    int8_engine: SenseVoice, tiny_engine: SenseVoice, pieces: list
) -> None:
    results = measure_fidelity(
        tiny_engine.features,
        pieces,
        runtime_logits(tiny_engine.model),
        {"int8": runtime_logits(int8_engine.model)},
    )
    assert results["int8"].frame_agreement >= MIN_FRAME_AGREEMENT
    assert results["int8"].logits_relative_error <= MAX_LOGITS_ERROR


def test_our_int8_is_no_further_from_fp32_than_sherpa_onnx_int8(
    int8_engine: SenseVoice, tiny_engine: SenseVoice, tiny_model_dir: Path, tmp_path: Path, pieces: list
) -> None:
    from sensevoice_serve.export import export_onnx

    sherpa_model = export_onnx(tiny_model_dir, tmp_path, int8=True).int8_model
    results = measure_fidelity(
        tiny_engine.features,
        pieces,
        runtime_logits(tiny_engine.model),
        {"ours": runtime_logits(int8_engine.model), "sherpa-onnx": onnx_logits(sherpa_model)},
    )
    ours, sherpa = results["ours"], results["sherpa-onnx"]
    assert ours.frame_agreement >= sherpa.frame_agreement, (ours.to_dict(), sherpa.to_dict())
    assert ours.logits_relative_error <= sherpa.logits_relative_error, (ours.to_dict(), sherpa.to_dict())


def test_a_padded_int8_batch_stays_close_to_each_utterance_alone(
    int8_engine: SenseVoice, pieces: list
) -> None:
    # Activations are quantized per batch, so company can move a token; the padding itself must not.
    short, long = sorted(pieces[:2], key=len)
    feats, lengths = int8_engine.features([long, short])
    alone, _ = int8_engine.features([short])
    together = runtime_logits(int8_engine.model)
    encoded, _ = int8_engine.model.encode(feats, lengths, ["auto", "auto"], [True, True])
    batched = int8_engine.model.ctc.logits(encoded[1, : lengths[1] + 4])
    single = together(alone, lengths[1:])
    assert (batched.argmax(-1) == single.argmax(-1)).mean() >= MIN_FRAME_AGREEMENT


def test_int8_on_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(InvalidOption, match="int8 runs on the CPU only"):
        resolve_dtype("int8", "cuda:0")
    h100 = MachineInfo(cpu_count=16, gpus=(GpuInfo("NVIDIA H100", (9, 0), 80 * GIB, 80 * GIB),))
    tuned = resolve_tuned_settings({"dtype": "int8"}, h100)
    with pytest.raises(InvalidOption, match="--device cpu"):
        resolve_dtype(tuned.dtype, tuned.device)


@needs_int8
def test_auto_picks_int8_only_where_the_cpu_multiplies_int8_in_one_instruction() -> None:
    assert int8_preferred({"avx2", "avx512f", "avx512_vnni"})
    assert int8_preferred({"avx2", "avx_vnni"})
    assert int8_preferred({"asimd", "asimddp"})
    assert not int8_preferred({"avx2", "fma"})
    assert resolve_dtype("auto", "cpu") == ("int8" if int8_preferred() else "fp32")


def test_unknown_dtype_lists_int8() -> None:
    with pytest.raises(InvalidOption, match="int8"):
        resolve_dtype("int4", "cpu")
