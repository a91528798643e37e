"""``RealtimeSession.finish`` (the server is shutting down) against the fake model and the scripted VAD."""

from __future__ import annotations

import asyncio

from .test_realtime_session import RATE, Client, run, silence, tone

COMPLETED = "conversation.item.input_audio_transcription.completed"


def test_an_open_turn_is_ended_and_transcribed_as_if_silence_had_come() -> None:
    async def test(client: Client) -> None:
        await client.configure(turn_detection={"type": "server_vad", "silence_duration_ms": 300})
        await client.append(silence(0.5))
        await client.append(tone(1.0))
        assert client.of_type("input_audio_buffer.speech_started") and not client.of_type(COMPLETED)
        await client.session.finish()
        await client.append(tone(0.2))  # after the drain began: refused

    client = run(test)
    [started] = client.of_type("input_audio_buffer.speech_started")
    item_events = [e for e in client.events if e.get("item_id") == started["item_id"]]
    kinds = [e["type"].rsplit(".", 1)[-1] for e in item_events]
    assert kinds[0] == "speech_started" and kinds[-1] == "completed"
    assert kinds.index("speech_stopped") + 1 == kinds.index("committed")
    [stopped] = client.of_type("input_audio_buffer.speech_stopped")
    assert stopped["audio_end_ms"] == 1500  # the end of the audio received
    [(samples, offset)] = client.transcriber.finals
    assert offset == started["audio_start_ms"] / 1000 and len(samples) == int((1.5 - offset) * RATE)
    assert client.errors() == ["shutting_down"] * 2  # the two appends of the last 0.2 s
    assert client.of_type("error")[0]["error"]["type"] == "server_error"


def test_finals_of_commits_are_awaited_and_an_uncommitted_buffer_is_not_transcribed() -> None:
    async def test(client: Client) -> None:
        client.transcriber.hold_finals = asyncio.Event()
        await client.configure(turn_detection=None)
        await client.append(tone(0.5))
        await client.send("input_audio_buffer.commit")
        await client.append(tone(0.3))  # never committed
        finishing = asyncio.create_task(client.session.finish())
        await client.settle(lambda: len(client.transcriber.finals) == 1)
        await client.send("input_audio_buffer.commit")  # refused while the drain waits for the final
        await client.append(tone(0.1))
        assert client.errors() == ["shutting_down"] * 2 and not finishing.done()
        client.transcriber.hold_finals.set()
        await finishing
        assert len(client.of_type(COMPLETED)) == 1

    client = run(test)
    [(samples, _)] = client.transcriber.finals
    assert len(samples) == int(0.5 * RATE)
    [committed] = client.of_type("input_audio_buffer.committed")
    assert client.of_type(COMPLETED)[0]["item_id"] == committed["item_id"]


def test_the_message_being_handled_when_the_drain_begins_is_finished_first() -> None:
    async def test(client: Client) -> None:
        await client.configure(turn_detection={"type": "server_vad", "silence_duration_ms": 300})
        await client.append(silence(0.5))
        client.speech.hold = asyncio.Event()
        speech = asyncio.create_task(client.append(tone(1.0), chunk=RATE))  # held in the VAD
        await client.settle(lambda: client.session._detection is not None)
        finishing = asyncio.create_task(client.session.finish())
        for _ in range(10):
            await asyncio.sleep(0)
        assert not finishing.done() and not client.of_type("input_audio_buffer.speech_started")
        client.speech.hold.set()
        await asyncio.gather(speech, finishing)

    client = run(test)
    [started] = client.of_type("input_audio_buffer.speech_started")
    assert client.of_type(COMPLETED)[0]["item_id"] == started["item_id"] and client.errors() == []
