"""What beam search and hotwords cost, relative to greedy decoding, on one batch of 16 x 10 s.

    .venv/bin/python benchmarks/hotwords.py --random-weights          # full-size RANDOM checkpoint (cached)
    .venv/bin/python benchmarks/hotwords.py --model DIR --device cuda --reps 10

The batch is cut from the real speech in ``../shared/audio`` (or ``--speech-dir``). Each configuration
(greedy; beam 4 and 10 with 0, 100 and 10,000 hotwords) is measured in every repetition, interleaved, in
one process with the same torch threads, so a noisy shared machine slows all of them alike:

* decode step: ``CTCDecoder.decode`` on one encoder output, the same for every configuration (the CTC head,
  top-k, beam search, tags; what runs after the forward), and its CPU part alone (``finish``: the search
  and the tags, what can run beside the next forward while the device works);
* end to end: ``SenseVoice.run_batch`` (features, forward and decoding), as the CLI and the server run it.

Ratios are per repetition against that repetition's greedy run, then the median. Hotword graphs are
compiled once before timing (``CTCDecoder.prepare``, as a request would); their compile time is printed.

With random weights no frame is nearly certain to be blank, so every frame is searched: the decode-step
figures are the worst case. The real checkpoint's blank frames are skipped (``searched`` column), and only
the real checkpoint can show whether hotwords make real names come out right: this measures cost, not
accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from sensevoice_serve.audio import SAMPLE_RATE
from sensevoice_serve.batching import BatchTimings, Utterance
from sensevoice_serve.beam_search import BLANK_SKIP_LOG_PROB
from sensevoice_serve.bench.material import (
    default_cache_dir,
    random_full_checkpoint,
    shared_speech_dir,
    speech_material,
)
from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.pipeline import SenseVoice
from sensevoice_serve.queries import NUM_QUERY_FRAMES
from sensevoice_serve.tokenizer import Tokenizer

BATCH, CLIP_SECONDS = 16, 10.0
HOTWORD_COUNTS = (0, 100, 10_000)
BEAM_SIZES = (4, 10)


def make_hotwords(tokenizer: Tokenizer, count: int, seed: int = 0) -> list[str]:
    """Phrases the tokenizer can write: half Latin words of 2-4 pieces, half of 2-4 Chinese characters."""
    rng = np.random.default_rng(seed)
    pieces = [tokenizer.piece(i).replace("\u2581", "") for i in range(tokenizer.vocab_size)]
    latin = [p for p in pieces if p.isascii() and p.isalpha()]
    chinese = [p for p in pieces if len(p) == 1 and "\u4e00" <= p <= "\u9fff"]
    phrases = []
    for index in range(count):
        source = latin if index % 2 else chinese
        parts = rng.choice(source, size=int(rng.integers(2, 5)))
        phrases.append("".join(parts).capitalize())
    return phrases


def configurations(tokenizer: Tokenizer) -> dict[str, DecodeOptions]:
    configs = {"greedy": DecodeOptions()}
    for beam in BEAM_SIZES:
        for count in HOTWORD_COUNTS:
            hotwords = make_hotwords(tokenizer, count)
            configs[f"beam {beam}, {count} hotwords"] = DecodeOptions(beam_size=beam, hotwords=hotwords)
    return configs


def batch(material: np.ndarray) -> list[np.ndarray]:
    """``BATCH`` clips of ``CLIP_SECONDS`` from consecutive stretches of the material (repeated if short)."""
    length = round(CLIP_SECONDS * SAMPLE_RATE)
    material = np.tile(material, -(-BATCH * length // len(material)))
    return [material[i * length : (i + 1) * length] for i in range(BATCH)]


@torch.inference_mode()
def encode(engine: SenseVoice, clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    features, lengths = engine.features(clips)
    return engine.model.encode(features, lengths, ["auto"] * len(clips), [True] * len(clips))


def searched_fraction(engine: SenseVoice, encoded: torch.Tensor, lengths: torch.Tensor) -> float:
    """Share of text frames whose blank is not near certain: what the beam search steps through."""
    with torch.inference_mode():
        text = [engine.model.ctc(encoded[i, NUM_QUERY_FRAMES : int(n)]) for i, n in enumerate(lengths)]
    blank = torch.cat([t[:, 0] for t in text])
    return float((blank <= BLANK_SKIP_LOG_PROB).float().mean())


class Clock:
    """Wall time and this process's CPU time (all its threads): on a machine shared with other work the
    CPU time moves far less than the wall time."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def measure(
    engine: SenseVoice, clips: list[np.ndarray], configs: dict[str, DecodeOptions], reps: int
) -> dict[str, dict[str, list[float]]]:
    """Per figure, each configuration's times: the decode step (``CTCDecoder.score``, the device's part,
    plus ``finish``), ``finish`` alone (beam search, tags: the CPU part that can run beside the next
    forward), and end to end."""
    encoded, encoded_lengths = encode(engine, clips)
    offsets, durations = [0.0] * len(clips), [CLIP_SECONDS] * len(clips)
    figures = ("decode wall", "decode cpu", "search cpu", "e2e wall", "e2e cpu")
    times: dict[str, dict[str, list[float]]] = {figure: {name: [] for name in configs} for figure in figures}
    for rep in range(reps + 1):  # the first round warms up and is not counted
        for name, options in configs.items():
            with Clock() as score:
                scores = engine.decoder.score(encoded, encoded_lengths, [options] * len(clips))
            with Clock() as finish:
                engine.decoder.finish(scores, [options] * len(clips), offsets, durations)
            with Clock() as end_to_end:
                engine.run_batch([Utterance(c, options) for c in clips], BatchTimings())
            if rep:
                for figure, value in zip(
                    figures,
                    (
                        score.wall + finish.wall,
                        score.cpu + finish.cpu,
                        finish.cpu,
                        end_to_end.wall,
                        end_to_end.cpu,
                    ),
                    strict=True,
                ):
                    times[figure][name].append(value)
    return times


def ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """Each configuration against greedy of the same repetition, the median over repetitions."""
    return {
        name: statistics.median(t / g for t, g in zip(values, times["greedy"], strict=True))
        for name, values in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model directory (default: the random full checkpoint)")
    parser.add_argument("--random-weights", action="store_true", help="use the full-size random checkpoint")
    parser.add_argument("--speech-dir", type=Path, default=shared_speech_dir())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", help="model dtype (decoding is float32 whatever it is)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.model is None and not args.random_weights:
        parser.error("give --model DIR or --random-weights")
    if args.speech_dir is None:
        parser.error("no speech: give --speech-dir DIR")
    torch.set_num_threads(args.threads)
    model = args.model or random_full_checkpoint(default_cache_dir())
    engine = SenseVoice.from_pretrained(model, device=args.device, dtype=args.dtype)
    clips = batch(speech_material(args.speech_dir, BATCH * CLIP_SECONDS))
    configs = configurations(engine.tokenizer)
    for name, options in configs.items():
        started = time.perf_counter()
        skipped = engine.decoder.prepare(options)
        if options.hotwords:
            ready = time.perf_counter() - started
            print(f"{name}: hotwords ready in {ready:.2f} s (then cached), {len(skipped)} skipped")

    searched = searched_fraction(engine, *encode(engine, clips))
    times = measure(engine, clips, configs, args.reps)
    print(
        f"\n{BATCH} x {CLIP_SECONDS:g} s on {engine.device} ({engine.dtype}, {torch.get_num_threads()} "
        f"threads), {args.reps} interleaved reps; {searched:.0%} of text frames searched"
        + (" (random weights: the worst case)" if engine.random_weights else "")
    )
    print("medians in ms; x greedy: the median of each repetition's ratio to its greedy run")
    print(f"{'configuration':<26}" + "".join(f"{figure:>12}{'x greedy':>9}" for figure in times))
    relative = {figure: ratios(values) for figure, values in times.items()}
    for name in configs:
        row = "".join(
            f"{statistics.median(times[f][name]) * 1000:>12.0f}{relative[f][name]:>9.2f}" for f in times
        )
        print(f"{name:<26}{row}")
    print(
        "\nCost only: whether hotwords fix real names needs the real checkpoint (random weights say nothing)."
    )


if __name__ == "__main__":
    main()
