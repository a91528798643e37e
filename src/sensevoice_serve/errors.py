"""One exception family: the CLI maps it to exit codes, the server to HTTP statuses."""


class SenseVoiceError(Exception):
    """Base of every error this package raises on purpose; the message is meant for humans."""

    http_status = 500


class AudioDecodeError(SenseVoiceError):
    """The input is not audio we can decode (empty, truncated to nothing, not audio, no audio stream)."""

    http_status = 400


class AudioTooLongError(SenseVoiceError):
    """Audio exceeds a configured maximum duration; raised while decoding, not after."""

    http_status = 413


class ModelLoadError(SenseVoiceError):
    """A model directory or hub id could not be resolved or does not match the architecture."""

    http_status = 500


class Unavailable(SenseVoiceError):
    """The server cannot take work right now; the client should retry later (503 + Retry-After)."""

    http_status = 503


class Overloaded(Unavailable):
    """Every admission place (or the scheduler's queue, or the temp space for uploads) is taken."""


class ModelLoading(Unavailable):
    """The model is still loading or warming up."""


class ShuttingDown(Unavailable):
    """The server is draining before it stops: no new work is admitted."""


class InferenceWorkerDied(Unavailable):
    """The inference worker crashed while it held this request; it has been restarted."""


class DeviceOutOfMemory(Unavailable):
    """One utterance alone did not fit in the device's memory (which other processes may share)."""


class InvalidOption(SenseVoiceError):
    """A transcription option has a value we do not support (e.g. an unknown language)."""

    http_status = 400


class DecodeWorkerDied(SenseVoiceError):
    """A decoder process crashed (or was killed) on this input; the pool has been rebuilt."""

    http_status = 503


class RequestTimeout(SenseVoiceError):
    http_status = 504


class Unauthorized(SenseVoiceError):
    http_status = 401


class UploadTooLarge(SenseVoiceError):
    http_status = 413


class UploadTimeout(SenseVoiceError):
    """An upload stalled, or arrived slower than the server's minimum rate."""

    http_status = 408


class DecodeTimeout(SenseVoiceError):
    """Decoding one upload outlasted the decode deadline; its decoder process was killed and replaced."""

    http_status = 422
