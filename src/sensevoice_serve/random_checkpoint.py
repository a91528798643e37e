"""Write SenseVoiceSmall model directories in the official layout with RANDOM weights (tests, benchmarks).

The real checkpoint cannot be downloaded on every machine; speed does not depend on weight values and parity
tests only need both implementations to read the same tensors. Every tensor is randomised at a sane scale
(including LayerNorm gains and the query embeddings) so that a missing or swapped parameter changes outputs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from importlib import resources
from pathlib import Path

import torch
import yaml

from .checkpoint import CMVN_FILENAME, CONFIG_FILENAME, RANDOM_WEIGHTS_MARKER, WEIGHTS_FILENAME
from .model import ModelDimensions, SenseVoiceSmall
from .tokenizer import EMOTION_TAGS, EVENT_TAGS, TOKENIZER_FILENAME, tag

VOCAB_SIZE = 25055
SIZES = {
    "full": ModelDimensions(),
    "tiny": ModelDimensions(output_size=128, attention_heads=4, linear_units=256, num_blocks=3, tp_blocks=2),
}

# Ids of the real tokenizer where they are published; event tags' ids are not, so these are our choice.
SPECIAL_PIECE_IDS = {
    tag("zh"): 24884,
    tag("en"): 24885,
    tag("yue"): 24888,
    tag("ja"): 24892,
    tag("ko"): 24896,
    tag("nospeech"): 24992,
    **{tag(name): 25001 + i for i, name in enumerate(EMOTION_TAGS[:-1])},
    tag("EMO_UNKNOWN"): 25009,
    **{tag(name): 24993 + i for i, name in enumerate(EVENT_TAGS[:8])},
    **{tag(name): 25010 + i for i, name in enumerate(EVENT_TAGS[8:])},
    tag("withitn"): 25016,
    tag("woitn"): 25017,
}


def _ordinary_pieces(count: int) -> list[str]:
    """Distinct word pieces: Latin letters and pairs (with and without the word-start mark), then CJK."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = ["\u2581", *letters, *(f"\u2581{c}" for c in letters)]
    pieces += [f"\u2581{a}{b}" for a in letters for b in letters]
    pieces += [f"{a}{b}" for a in letters for b in letters]
    code_point = 0x4E00
    while len(pieces) < count:
        pieces.append(chr(code_point))
        code_point += 1
    return pieces[:count]


def write_tokenizer(path: Path, vocab_size: int = VOCAB_SIZE) -> None:
    """A unigram sentencepiece model with exactly ``vocab_size`` pieces and the tags at their real ids."""
    from sentencepiece import sentencepiece_model_pb2 as spm_model

    proto = spm_model.ModelProto()
    proto.trainer_spec.model_type = spm_model.TrainerSpec.UNIGRAM
    proto.trainer_spec.vocab_size = vocab_size
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.escape_whitespaces = True

    Piece = spm_model.ModelProto.SentencePiece
    specials = {token_id: piece for piece, token_id in SPECIAL_PIECE_IDS.items()}
    fixed = {0: ("<unk>", Piece.UNKNOWN), 1: ("<s>", Piece.CONTROL), 2: ("</s>", Piece.CONTROL)}
    ordinary = iter(_ordinary_pieces(vocab_size - len(fixed) - len(specials)))
    for token_id in range(vocab_size):
        entry = proto.pieces.add()
        if token_id in fixed:
            entry.piece, entry.type = fixed[token_id]
        elif token_id in specials:
            entry.piece, entry.type = specials[token_id], Piece.USER_DEFINED
        else:
            entry.piece, entry.type = next(ordinary), Piece.NORMAL
            entry.score = -len(entry.piece) - token_id * 1e-5
    path.write_bytes(proto.SerializeToString())


def random_state_dict(dims: ModelDimensions, seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in SenseVoiceSmall(dims).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        is_norm = ".norm" in name or name.endswith(("after_norm.weight", "tp_norm.weight"))
        if is_norm and name.endswith(".weight"):
            state[name] = 1 + 0.2 * noise
        elif name.endswith(".bias"):
            state[name] = 0.1 * noise
        elif name == "embed.weight":
            state[name] = noise
        else:
            fan_in = shape[1] * (shape[2] if len(shape) == 3 else 1)
            state[name] = noise / fan_in**0.5
    return state


def write_random_checkpoint(directory: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write config.yaml, model.pt, am.mvn, the tokenizer and configuration.json into ``directory``."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    dims = replace(SIZES[size], vocab_size=VOCAB_SIZE)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    assets = resources.files("sensevoice_serve") / "assets"

    config = yaml.safe_load((assets / CONFIG_FILENAME).read_text())
    config["encoder_conf"].update(
        output_size=dims.output_size,
        attention_heads=dims.attention_heads,
        linear_units=dims.linear_units,
        num_blocks=dims.num_blocks,
        tp_blocks=dims.tp_blocks,
    )
    (directory / CONFIG_FILENAME).write_text(yaml.safe_dump(config, sort_keys=False))
    with resources.as_file(assets / CMVN_FILENAME) as cmvn:
        shutil.copyfile(cmvn, directory / CMVN_FILENAME)
    write_tokenizer(directory / TOKENIZER_FILENAME, dims.vocab_size)
    torch.save(random_state_dict(dims, seed), directory / WEIGHTS_FILENAME)
    # Same shape as the hub's file, so funasr's AutoModel can load the directory for parity tests.
    configuration = {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "file_path_metas": {
            "init_param": WEIGHTS_FILENAME,
            "config": CONFIG_FILENAME,
            "tokenizer_conf": {"bpemodel": TOKENIZER_FILENAME},
            "frontend_conf": {"cmvn_file": CMVN_FILENAME},
        },
    }
    (directory / "configuration.json").write_text(json.dumps(configuration, indent=2))
    (directory / RANDOM_WEIGHTS_MARKER).write_text(
        f"RANDOM weights ({size}, seed {seed}) written by sensevoice-serve for tests and benchmarks.\n"
        "Transcripts from this model are meaningless; timings and memory are representative.\n"
    )
    return directory
