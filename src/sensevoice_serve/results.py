"""Result types: what one stretch of speech (a segment) and one whole input (a transcription) came out as."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from .tokenizer import tag

EMOTION_EMOJI = {
    "HAPPY": "😊",
    "SAD": "😔",
    "ANGRY": "😡",
    "NEUTRAL": "",
    "FEARFUL": "😰",
    "DISGUSTED": "🤢",
    "SURPRISED": "😮",
}
# Prepended in reverse of this order, as the official demo does.
EVENT_EMOJI = {
    "BGM": "🎼",
    "Speech": "",
    "Applause": "👏",
    "Laughter": "😀",
    "Cry": "😭",
    "Sneeze": "🤧",
    "Breath": "",
    "Cough": "🤧",
}
EMOTION_MARKS = frozenset(e for e in EMOTION_EMOJI.values() if e)
# The demo also treats 😷 (its emoji for a cough in running text) as an event mark.
EVENT_MARKS = frozenset(e for e in EVENT_EMOJI.values() if e) | {"😷"}
SILENT_TAGS = ("EMO_UNKNOWN", "Sing", "Speech_Noise", "withitn", "woitn", "GBG", "Event_UNK")
LANGUAGE_NAMES = ("zh", "en", "yue", "ja", "ko", "nospeech")
NO_SPEECH_UNKNOWN_EVENT = tag("nospeech") + tag("Event_UNK")


@dataclass
class Token:
    id: int
    text: str  # the sentencepiece piece
    start: float  # seconds from the start of the input
    end: float


def render_tokens(tokens: list[Token]) -> str:
    """Text of consecutive tokens, as sentencepiece joins pieces ("▁" marks a word start)."""
    return "".join(token.text for token in tokens).replace("\u2581", " ").strip()


@dataclass
class Segment:
    start: float
    end: float
    text: str
    raw_text: str  # with tags, exactly as the reference prints it
    language: str | None = None
    emotion: str | None = None
    emotion_prob: float | None = None
    event: str | None = None
    itn: bool | None = None
    tokens: list[Token] = field(default_factory=list)
    channel: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def emoji_text(self) -> str:
        return render_emoji(self.raw_text)


@dataclass
class Transcription:
    """One input's result: its segments (one for short audio) and what they say together."""

    source: str
    duration: float
    segments: list[Segment]
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)

    @property
    def raw_text(self) -> str:
        return "".join(s.raw_text for s in self.segments)

    @property
    def tokens(self) -> list[Token]:
        return [token for segment in self.segments for token in segment.tokens]

    def _dominant(self, attribute: str) -> str | None:
        """The value covering the most speech time, so one short aside does not label the whole file."""
        weights: Counter[str] = Counter()
        for segment in self.segments:
            value = getattr(segment, attribute)
            if value is not None:
                weights[value] += max(segment.end - segment.start, 1e-3)
        return weights.most_common(1)[0][0] if weights else None

    @property
    def language(self) -> str | None:
        return self._dominant("language")

    @property
    def emotion(self) -> str | None:
        return self._dominant("emotion")

    @property
    def emotion_prob(self) -> float | None:
        probs = [
            s.emotion_prob for s in self.segments if s.emotion == self.emotion and s.emotion_prob is not None
        ]
        return max(probs) if probs else None

    @property
    def event(self) -> str | None:
        return self._dominant("event")

    @property
    def itn(self) -> bool | None:
        return next((s.itn for s in self.segments if s.itn is not None), None)

    def emoji_text(self) -> str:
        return " ".join(filter(None, (s.emoji_text() for s in self.segments)))

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "duration": self.duration,
            "language": self.language,
            "emotion": self.emotion,
            "emotion_prob": self.emotion_prob,
            "event": self.event,
            "itn": self.itn,
            "text": self.text,
            "raw_text": self.raw_text,
            "emoji_text": self.emoji_text(),
            "warnings": list(self.warnings),
            "segments": [segment.to_dict() for segment in self.segments],
        }


def _render_chunk(chunk: str) -> str:
    """Tags of one language run -> event emojis in front, the most frequent emotion's emoji behind."""
    counts = {}
    for name in (*EMOTION_EMOJI, *EVENT_EMOJI, *SILENT_TAGS):
        counts[name] = chunk.count(tag(name))
        chunk = chunk.replace(tag(name), "")
    emotion = "NEUTRAL"
    for name in EMOTION_EMOJI:
        if counts[name] > counts[emotion]:
            emotion = name
    for name, emoji in EVENT_EMOJI.items():
        if counts[name]:
            chunk = emoji + chunk
    chunk += EMOTION_EMOJI[emotion]
    for emoji in EMOTION_MARKS | EVENT_MARKS:
        chunk = chunk.replace(" " + emoji, emoji).replace(emoji + " ", emoji)
    return chunk.strip()


def render_emoji(raw_text: str) -> str:
    """The emoji form of the official SenseVoice demo: tags become emojis, repeats across languages merge."""
    text = raw_text.replace(NO_SPEECH_UNKNOWN_EVENT, "❓")
    for name in LANGUAGE_NAMES:
        text = text.replace(tag(name), "<|lang|>")
    chunks = [_render_chunk(chunk).strip(" ") for chunk in text.split("<|lang|>")]
    rendered = " " + chunks[0]
    current_event = None
    for chunk in chunks[1:]:
        if chunk and chunk[0] in EVENT_MARKS and chunk[0] == current_event:
            chunk = chunk[1:]
        if not chunk:
            continue
        current_event = chunk[0] if chunk[0] in EVENT_MARKS else None
        if chunk[-1] in EMOTION_MARKS and chunk[-1] == rendered[-1]:
            rendered = rendered[:-1]
        rendered += chunk.strip()
    return rendered.strip()
