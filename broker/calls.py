"""Requests over the bus's control topic, answered by whichever process owns the subject.

A caller publishes `{"kind": K, "call": ID, ...}` and waits for `{"kind": K + "-result",
"call": ID, ...}`; the owner (the DVR worker for recordings) answers on the same topic.
PUB/SUB may drop a message, so a call that gets no answer in time says so.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

RESULT_SUFFIX = "-result"


class CallTimeout(Exception):
    """Nobody answered the call in time (the owner is down, or the message was lost)."""


class BusCalls:
    def __init__(self, send_control: Callable[[str, dict[str, object]], None]) -> None:
        self._send = send_control
        self._ids = itertools.count()
        self._prefix = f"{os.getpid()}-"  # calls of different processes never collide
        self._waiting: dict[str, tuple[trio.Event, list[dict[str, Any]]]] = {}

    async def call(self, kind: str, body: dict[str, object], *,
                   timeout_s: float) -> dict[str, Any]:
        call_id = f"{self._prefix}{next(self._ids)}"
        event, answers = self._waiting[call_id] = (trio.Event(), [])
        try:
            self._send(kind, {**body, "call": call_id})
            with trio.move_on_after(timeout_s):
                await event.wait()
                return answers[0]
            raise CallTimeout(f"no answer to {kind} in {timeout_s:.0f} s")
        finally:
            del self._waiting[call_id]

    async def gather(self, kind: str, body: dict[str, object], *,
                     window_s: float) -> list[dict[str, Any]]:
        """A call every worker may answer: the answers that came within window_s."""
        call_id = f"{self._prefix}{next(self._ids)}"
        answers: list[dict[str, Any]] = []
        self._waiting[call_id] = (trio.Event(), answers)
        try:
            self._send(kind, {**body, "call": call_id})
            await trio.sleep(window_s)
            return list(answers)
        finally:
            del self._waiting[call_id]

    def on_control(self, body: dict[str, Any]) -> None:
        """Give every control message here: answers to our calls are picked out."""
        kind = body.get("kind")
        if not isinstance(kind, str) or not kind.endswith(RESULT_SUFFIX):
            return
        waiting = self._waiting.get(str(body.get("call")))
        if waiting is not None:
            waiting[1].append(body)
            waiting[0].set()
