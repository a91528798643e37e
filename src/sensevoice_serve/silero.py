"""Silero VAD v6's speech probabilities: the only module that knows the model's internals.

Which model
-----------
Silero VAD v6, from the ``silero-vad`` PyPI package (MIT), which ships its weights inside the wheel
(``silero_vad/data/silero_vad.jit``, plus ONNX exports). From 6.2.3 on, the package's only hard
dependencies are ``torch`` and ``packaging``: torchaudio and onnxruntime moved to extras, so
``pip install "silero-vad>=6.2.3"`` brings nothing that conflicts with our CPU torch pin. Earlier releases
hard-require torchaudio (no build exists for our torch), and 6.0/6.1 ship older weights. The TorchScript
file runs on the torch we already have; the ONNX file would add onnxruntime for no gain. The package also
ships ``silero_vad_16k.safetensors``, but those weights are not the ones in the TorchScript/ONNX model the
package uses by default (they differ by far more than rounding), so we load the TorchScript model.

Why not the package's own API
-----------------------------
- Importing ``silero_vad`` runs ``torch.set_num_threads(1)`` (in its ``model`` module), which would
  silently slow down the ASR model in the same process. We never import it: ``importlib.util.find_spec``
  only locates its data directory, without executing the package.
- Its API (``get_speech_timestamps``, ``VADIterator``) steps the scripted model one 512-sample window per
  call, carrying an LSTM state: ~100x real time on one core, about a minute per 2-hour file. Only the LSTM
  is sequential, though: the STFT and convolution encoder see one window (plus 64 samples of context) at a
  time and no state. So ``SileroModel`` runs the scripted STFT, encoder and output head on a whole block of
  windows at once, and the LSTM over the block's sequence with one ``torch.nn.LSTM`` call holding the
  scripted cell's weights: ~1,500x real time on one thread, ~2,400x on two (2-core machine, 10 minutes of
  speech and pauses). ``SpeechProbabilities`` streams any chunking of a signal through it, holding only
  the LSTM state and less than one block of samples.
- ``get_speech_timestamps`` also wants the whole signal in memory; we stream hours of audio.

Reaching into the scripted model's layers (``_model.stft``, ``.encoder``, ``.decoder``) is what this
costs: a future package could rearrange them. So the model is self-checked when it loads (the batched
path must reproduce the scripted model's own stepwise output), and a package whose internals changed
fails loudly instead of segmenting badly.

Threads: nothing here calls ``torch.set_num_threads``: it is process-wide state that the ASR model depends
on, and with torch's OpenMP backend even a temporary change sticks to threads that start meanwhile. The
model runs in the calling thread with that thread's intra-op setting. One thread is plenty (a 2-hour file
in about 5 s), and more threads than idle cores hurt: two threads beside a busy core fell to a few hundred
times real time, as OpenMP threads wait for each other. Callers that share the CPU with the ASR model
should therefore run the VAD where torch uses one thread, e.g. in the decoding process pool.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    _LstmState = tuple[torch.Tensor, torch.Tensor]

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 512  # silero's native window at 16 kHz: one probability per 32 ms
CONTEXT_SAMPLES = 64  # the tail of the previous window that silero prepends to each window
# Windows per network call: big enough to amortise the per-call overhead (~1,500x real time),
# small enough that streamed segments are not held back long (about 16 s of audio).
BLOCK_WINDOWS = 512
SELF_CHECK_TOLERANCE = 1e-4


class SileroModel:
    """The shipped model's layers, run a block of windows per call. Read-only: threads may share it."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        import torch

        self._scripted = scripted
        try:
            core = scripted._model
            self._spectrum = core.stft
            self._encoder = core.encoder
            self._head = core.decoder.decoder
            cell = core.decoder.rnn
            hidden_size = cell.weight_hh.shape[1]
            self._lstm = torch.nn.LSTM(cell.weight_ih.shape[1], hidden_size, batch_first=True)
            with torch.no_grad():
                self._lstm.weight_ih_l0.copy_(cell.weight_ih)
                self._lstm.weight_hh_l0.copy_(cell.weight_hh)
                self._lstm.bias_ih_l0.copy_(cell.bias_ih)
                self._lstm.bias_hh_l0.copy_(cell.bias_hh)
        except (AttributeError, RuntimeError) as error:
            raise ModelLoadError(
                f"silero-vad's TorchScript model has an unexpected layout: {error}"
            ) from error
        self._lstm.eval()
        self._hidden_size = hidden_size

    def stream(self) -> SpeechProbabilities:
        """Probabilities for one signal fed in consecutive chunks."""
        return SpeechProbabilities(self)

    def initial_state(self) -> _LstmState:
        import torch

        zeros = torch.zeros(1, 1, self._hidden_size)
        return zeros, zeros.clone()

    def probabilities(self, windows: torch.Tensor, state: _LstmState) -> tuple[torch.Tensor, _LstmState]:
        """(N, CONTEXT + WINDOW) windows in time order -> N speech probabilities and the new LSTM state."""
        features = self._encoder(self._spectrum(windows)).squeeze(-1)
        hidden, state = self._lstm(features.unsqueeze(0), state)
        speech = self._head(hidden[0].unsqueeze(-1))
        return speech.mean(dim=(1, 2)), state

    def run(self, with_context: np.ndarray, state: _LstmState) -> tuple[np.ndarray, _LstmState]:
        """``probabilities`` of the whole windows in ``with_context``: CONTEXT_SAMPLES of what came before,
        then the windows' float32 samples."""
        import torch

        with torch.inference_mode():
            windows = torch.from_numpy(with_context).unfold(
                0, CONTEXT_SAMPLES + WINDOW_SAMPLES, WINDOW_SAMPLES
            )
            probabilities, state = self.probabilities(windows, state)
        return probabilities.numpy(), state

    def check_against_scripted(self) -> None:
        """Fail at load time if the batched path no longer reproduces the scripted model stepwise."""
        import torch

        probe = _self_check_probe()
        with torch.inference_mode():
            self._scripted.reset_states()
            expected = torch.cat(
                [
                    self._scripted(window.unsqueeze(0), SAMPLE_RATE)[:, 0]
                    for window in probe.split(WINDOW_SAMPLES)
                ]
            )
            self._scripted.reset_states()
            with_context = torch.cat([torch.zeros(CONTEXT_SAMPLES), probe])
            windows = with_context.unfold(0, CONTEXT_SAMPLES + WINDOW_SAMPLES, WINDOW_SAMPLES)
            batched, _ = self.probabilities(windows, self.initial_state())
        difference = (batched - expected).abs().max().item()
        if difference > SELF_CHECK_TOLERANCE:
            raise ModelLoadError(
                "silero-vad's model no longer matches our batched evaluation "
                f"(max difference {difference:.2g}); pin silero-vad to a version this module supports"
            )


class SpeechProbabilities:
    """Speech probabilities of consecutive chunks, computed a fixed block of windows at a time.

    Blocks start at absolute multiples of BLOCK_WINDOWS, so every window is computed in the same batch
    position whatever the chunking: chunked and whole-signal runs are bit-identical. Use from one thread.
    """

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self._state = model.initial_state()
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._unprocessed = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """One probability per window completed so far (16 kHz mono float32 samples in)."""
        # Whole signals arrive with nothing buffered: use them in place rather than copy hours of audio.
        buffered = np.concatenate([self._unprocessed, samples]) if len(self._unprocessed) else samples
        block_samples = BLOCK_WINDOWS * WINDOW_SAMPLES
        complete = len(buffered) // block_samples * block_samples
        probabilities = [
            self._run(buffered[offset : offset + block_samples])
            for offset in range(0, complete, block_samples)
        ]
        # Copy, so a large caller array is not kept alive through a view of its tail.
        self._unprocessed = buffered[complete:].copy()
        return np.concatenate(probabilities) if probabilities else np.zeros(0, dtype=np.float32)

    def finish(self) -> np.ndarray:
        """Probabilities of what is left, the last window zero-padded (as silero itself does)."""
        if not len(self._unprocessed):
            return np.zeros(0, dtype=np.float32)
        padded_length = math.ceil(len(self._unprocessed) / WINDOW_SAMPLES) * WINDOW_SAMPLES
        tail = np.zeros(padded_length, dtype=np.float32)
        tail[: len(self._unprocessed)] = self._unprocessed
        self._unprocessed = np.zeros(0, dtype=np.float32)
        return self._run(tail)

    def _run(self, block: np.ndarray) -> np.ndarray:
        with_context = np.concatenate([self._context, block])
        self._context = with_context[-CONTEXT_SAMPLES:].copy()
        probabilities, self._state = self._model.run(with_context, self._state)
        return probabilities


@functools.lru_cache(maxsize=1)
def load_model() -> SileroModel:
    """The shipped model, loaded and self-checked once per process and shared by every caller."""
    import torch

    path = shipped_model_path()
    try:
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as error:
        raise ModelLoadError(f"Could not load the silero VAD model {path}: {error}") from error
    model = SileroModel(scripted)
    model.check_against_scripted()
    return model


def shipped_model_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            'The VAD model comes from the silero-vad package: pip install "silero-vad>=6.2.3"'
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.jit"
    if not path.is_file():
        raise ModelLoadError(f"silero-vad is installed but its model file {path} is missing")
    return path


def _self_check_probe() -> torch.Tensor:
    """About a second of voiced-like signal (a gliding harmonic tone over noise), then noise alone."""
    import torch

    generator = np.random.default_rng(0)
    voiced_windows = 32
    signal = generator.normal(scale=0.01, size=2 * voiced_windows * WINDOW_SAMPLES)
    time = np.arange(voiced_windows * WINDOW_SAMPLES) / SAMPLE_RATE
    pitch_phase = 2 * np.pi * (120 * time + 40 * time**2)
    signal[: len(time)] += 0.3 * sum(np.sin(harmonic * pitch_phase) / harmonic for harmonic in range(1, 8))
    return torch.from_numpy(signal.astype(np.float32))
