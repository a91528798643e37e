"""Realtime transcription: OpenAI's Realtime protocol (transcription sessions) on the shared scheduler.

``protocol`` (events and session settings) -> ``session`` (one client's stream: audio in, events out) using
``codecs`` (input audio to 16 kHz), ``turns`` (server VAD), ``transcript`` (deltas) and ``transcriber``
(partials and finals as scheduler requests). The WebSocket route is ``server/routes/realtime.py``.
"""
