"""Several devices in one server: one ``Scheduler`` per device, each request to the least loaded one.

Load is the audio a scheduler has been given and not yet answered, in frames (a 30 s file weighs 30 times a
1 s one, which a count of requests would not see), so a faster device, which answers sooner, gets more. A
device whose worker is restarting gets work only when every device is; one that refuses (its queue is full)
passes the request on to the next. All of a request's utterances go to one device: its segments come back
together, as they do from a single scheduler.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future

from .batching import Utterance
from .errors import Overloaded
from .scheduler import Priority, RequestResult, Scheduler


def device_labels(schedulers: Sequence[Scheduler]) -> list[str]:
    """Each scheduler's device as metrics and logs name it: ``cuda:1``, or ``cpu#0``, ``cpu#1`` when a device
    is listed twice."""
    names = [str(scheduler.engine.device) for scheduler in schedulers]
    return [
        name if names.count(name) == 1 else f"{name}#{names[:i].count(name)}" for i, name in enumerate(names)
    ]


class Router:
    """The ``Scheduler`` interface (``submit``, ``pending``, ``healthy``, ``start``, ``stop``) over many."""

    def __init__(self, schedulers: Sequence[Scheduler]) -> None:
        if not schedulers:
            raise ValueError("a router needs at least one scheduler")
        self.schedulers = list(schedulers)
        self.labels = device_labels(self.schedulers)
        self._outstanding = [0] * len(self.schedulers)  # frames submitted and not answered, per scheduler
        self._routed = [0] * len(self.schedulers)  # requests ever routed: spreads ties evenly
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return sum(scheduler.pending for scheduler in self.schedulers)

    @property
    def healthy(self) -> bool:
        """Every device's worker runs (a dead one restarts at once, so this is false only briefly)."""
        return all(scheduler.healthy for scheduler in self.schedulers)

    def unhealthy_devices(self) -> list[str]:
        return [label for label, s in zip(self.labels, self.schedulers, strict=True) if not s.healthy]

    def outstanding_frames(self, index: int) -> int:
        return self._outstanding[index]

    def start(self) -> None:
        for scheduler in self.schedulers:
            scheduler.start()

    def stop(self) -> None:
        """Finish everything admitted on every device. They drain together: each keeps working while an
        earlier one is being waited for."""
        for scheduler in self.schedulers:
            scheduler.stop()

    def submit(
        self, utterances: Sequence[Utterance], priority: Priority = Priority.HIGH
    ) -> Future[RequestResult]:
        """``Scheduler.submit`` on the least loaded device; ``Overloaded`` only when every device refuses."""
        frames = sum(utterance.frames for utterance in utterances)
        refusal: Overloaded | None = None
        for index in self._order():
            with self._lock:
                self._outstanding[index] += frames
                self._routed[index] += 1
            try:
                future = self.schedulers[index].submit(utterances, priority)
            except Overloaded as error:
                self._settle(index, frames)
                refusal = error
                continue
            except BaseException:
                self._settle(index, frames)
                raise
            future.add_done_callback(lambda _, index=index: self._settle(index, frames))
            return future
        assert refusal is not None
        raise refusal

    def _order(self) -> list[int]:
        """Healthy devices first, then least outstanding frames, then fewest requests routed so far."""
        with self._lock:
            return sorted(
                range(len(self.schedulers)),
                key=lambda i: (not self.schedulers[i].healthy, self._outstanding[i], self._routed[i]),
            )

    def _settle(self, index: int, frames: int) -> None:
        with self._lock:
            self._outstanding[index] -= frames
