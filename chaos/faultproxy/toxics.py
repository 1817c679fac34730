"""Toxics: their configuration and their behaviour on one link.

Owns spec §8: every toxic type as a :class:`Stage` that one link (one connection, one
direction) runs each chunk through. A stage receives an item (a chunk of bytes stamped with
the time the proxy read it, or the end of the stream) and yields what goes on to the next
stage: the same item, pieces of it, nothing (dropped), or an early end of stream (the link
closes). A stage may also act on the whole connection through its :class:`LinkContext`
(graceful close for ``timeout``, TCP RST for ``reset_peer``).

"Interrupt" = the toxic was updated or removed on a live link: a stage holding a chunk
releases it at once, never loses it (``timeout`` and ``reset_peer`` drop by definition).

Must not import sockets, asyncio streams, aiohttp or the proxy; the link supplies the
context.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from chaos.faultproxy.model import (
    Attributes,
    BandwidthAttributes,
    LatencyAttributes,
    LimitDataAttributes,
    NoopAttributes,
    ResetPeerAttributes,
    SlicerAttributes,
    SlowCloseAttributes,
    TimeoutAttributes,
)


class Direction(enum.Enum):
    """Which way the bytes flow: ``upstream`` = client to server, ``downstream`` = back."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"

    @classmethod
    def parse(cls, stream: str) -> Direction | None:
        """Return the direction named by ``stream`` (case-insensitive), or None."""
        lowered = stream.lower()
        for direction in cls:
            if direction.value == lowered:
                return direction
        return None


@dataclass(slots=True)
class Chunk:
    """Bytes read from a link's source, stamped with the loop time of the read.

    Latency stages advance ``stamp`` by the delay they applied, so chained latencies add up.
    """

    data: bytes
    stamp: float


class EndOfStream:
    """The source reported EOF (or a stage ended the link): close the destination."""

    _instance: ClassVar[EndOfStream | None] = None

    def __new__(cls) -> EndOfStream:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "EOF"


EOF = EndOfStream()
Item = Chunk | EndOfStream


class LinkContext(Protocol):
    """What a stage may use of the link it runs on."""

    rng: random.Random
    """The link's own seeded generator (toxicity draws, jitter, slicer cuts)."""

    def close_connection(self) -> None:
        """Close both sockets of the connection gracefully (FIN)."""

    def reset_connection(self) -> None:
        """Close both sockets of the connection with TCP RST."""


@dataclass(eq=False, slots=True)
class Toxic:
    """One toxic as configured on a proxy (what the API shows and edits).

    Identity matters: a toxic removed and added again is a new object, so per-link state
    (``limit_data``'s byte count) restarts.

    Attributes:
        name: unique per proxy across both streams.
        type: the toxic type name (a key of :data:`TOXIC_TYPES`).
        stream: the stream as the client spelled it (output echoes it).
        direction: the parsed stream.
        toxicity: probability, per link, that the toxic acts.
        attributes: the type's attributes.
    """

    name: str
    type: str
    stream: str
    direction: Direction
    toxicity: float
    attributes: Attributes

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON object the API shows for this toxic (reference key order)."""
        return {
            "attributes": self.attributes.model_dump(),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": _number(self.toxicity),
        }


def _number(value: float) -> float | int:
    # Go prints float32 toxicity 1 as "1": emit integral values as integers.
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _resolve(future: asyncio.Future[bool], interrupted: bool) -> None:
    if not future.done():
        future.set_result(interrupted)


class Stage:
    """A toxic's behaviour on one link; subclasses override :meth:`pipe` and the hooks.

    The link calls :meth:`attach` once, :meth:`update` after each API update,
    :meth:`detach` on removal and :meth:`dispose` when the connection ends.
    """

    def __init__(self, toxic: Toxic, link: LinkContext) -> None:
        self.toxic = toxic
        self.link = link
        self.active = False
        self._interrupts = 0
        self._waiter: asyncio.Future[bool] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self) -> None:
        """Draw toxicity and start acting (a timer, for the types that have one)."""
        self._draw()
        if self.active:
            self.on_start()

    def update(self) -> None:
        """The toxic's parameters changed: re-draw toxicity, release what is held."""
        was_active = self.active
        self._draw()
        self._interrupt()
        if was_active:
            self.on_stop()
        if self.active:
            self.on_start()

    def detach(self) -> None:
        """The toxic was removed: release what is held, then the per-type removal."""
        self._interrupt()
        if self.active:
            self.on_removed()

    def dispose(self) -> None:
        """The connection ended: cancel timers. Nothing else may happen afterwards."""
        self.on_stop()

    def _draw(self) -> None:
        self.active = self.link.rng.random() < self.toxic.toxicity

    def _interrupt(self) -> None:
        self._interrupts += 1
        if self._waiter is not None:
            _resolve(self._waiter, True)

    # -- per-type hooks ----------------------------------------------------------------------

    def on_start(self) -> None:
        """The toxic became active on this link."""

    def on_stop(self) -> None:
        """The toxic stops acting on this link (update re-draw, connection end)."""

    def on_removed(self) -> None:
        """The toxic, active on this link, was removed from the proxy."""

    async def pipe(self, item: Item) -> AsyncGenerator[Item, None]:
        """Process one item; yield what goes on to the next stage."""
        yield item

    # -- helpers ------------------------------------------------------------------------------

    def generation(self) -> int:
        """Return the interrupt count; pass it to :meth:`sleep` to notice interrupts."""
        return self._interrupts

    async def sleep(self, delay_s: float | None, generation: int) -> bool:
        """Wait ``delay_s`` seconds (None = until interrupted).

        Returns:
            True if the stage was interrupted since ``generation`` was taken, else False.
        """
        if self._interrupts != generation:
            return True
        if delay_s is not None and delay_s <= 0:
            return False
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._waiter = future
        handle = None if delay_s is None else loop.call_later(delay_s, _resolve, future, False)
        try:
            return await future
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()


class NoopStage(Stage):
    """``noop``: passes everything."""


class LatencyStage(Stage):
    """``latency``: each chunk leaves at ``stamp + latency ± jitter`` (no reordering)."""

    async def pipe(self, item: Item) -> AsyncGenerator[Item, None]:
        """Hold a chunk until its due time; the end of stream passes at once."""
        generation = self.generation()
        if isinstance(item, Chunk):
            attrs = self.toxic.attributes
            assert isinstance(attrs, LatencyAttributes)
            delay_ms = attrs.latency
            if attrs.jitter > 0:
                delay_ms += self.link.rng.randrange(-attrs.jitter, attrs.jitter)
            if delay_ms > 0:
                due = item.stamp + delay_ms / 1000
                loop = asyncio.get_running_loop()
                interrupted = await self.sleep(due - loop.time(), generation)
                # A later latency stage measures its own delay from this release.
                item = Chunk(item.data, loop.time() if interrupted else due)
        yield item


class BandwidthStage(Stage):
    """``bandwidth``: ``rate`` KB/s with a running debt; rate 0 stalls until interrupted."""

    def __init__(self, toxic: Toxic, link: LinkContext) -> None:
        super().__init__(toxic, link)
        self._debt_s = 0.0

    async def pipe(self, item: Item) -> AsyncGenerator[Item, None]:
        """Release bytes no faster than the rate, in 100 ms pieces when they are large."""
        generation = self.generation()
        if not isinstance(item, Chunk):
            yield item
            return
        attrs = self.toxic.attributes
        assert isinstance(attrs, BandwidthAttributes)
        rate = attrs.rate
        data, stamp = item.data, item.stamp
        if rate <= 0:
            # Stall: hold the chunk (and, by backpressure, the sender) until the toxic
            # is updated or removed; nothing is lost.
            await self.sleep(None, generation)
            self._debt_s = 0.0
            yield item
            return
        self._debt_s += len(data) / (rate * 1000)
        piece = rate * 100
        while len(data) > piece:
            if await self.sleep(0.1, generation):
                self._debt_s = 0.0
                yield Chunk(data, stamp)
                return
            yield Chunk(data[:piece], stamp)
            data = data[piece:]
            self._debt_s -= 0.1
        loop = asyncio.get_running_loop()
        started = loop.time()
        if await self.sleep(self._debt_s, generation):
            self._debt_s = 0.0
        else:
            # Overshoot of the timer is credited to the next chunk.
            self._debt_s -= loop.time() - started
        yield Chunk(data, stamp)


class SlowCloseStage(Stage):
    """``slow_close``: data passes; the end of stream is held ``delay`` ms."""

    async def pipe(self, item: Item) -> AsyncGenerator[Item, None]:
        """Delay only the end of stream."""
        generation = self.generation()
        if isinstance(item, EndOfStream):
            attrs = self.toxic.attributes
            assert isinstance(attrs, SlowCloseAttributes)
            await self.sleep(attrs.delay / 1000, generation)
        yield item


class TimeoutStage(Stage):
    """``timeout``: drop every chunk; close after ``timeout`` ms without data (0 = never).

    The timer restarts on every dropped chunk (the reference's idle semantics). Expiry and
    removal close both sockets of the connection at once, gracefully (FIN): the bytes it
    swallowed would otherwise corrupt the stream. Data held by other stages of the
    connection is dropped then, where the reference would let the close travel through the
    rest of the chain.
    """

    def __init__(self, toxic: Toxic, link: LinkContext) -> None:
        super().__init__(toxic, link)
        self._timer: asyncio.TimerHandle | None = None

    def on_start(self) -> None:
        """Start the idle timer."""
        self._arm()

    def on_stop(self) -> None:
        """Cancel the idle timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_removed(self) -> None:
        """Close the connection the toxic was black-holing."""
        self.on_stop()
        self.link.close_connection()

    def _arm(self) -> None:
        self.on_stop()
        attrs = self.toxic.attributes
        assert isinstance(attrs, TimeoutAttributes)
        if attrs.timeout > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(attrs.timeout / 1000, self.link.close_connection)

    async def pipe(self, item: Item) -> AsyncGenerator[Item, None]:
        """Swallow chunks; the end of stream closes the link."""
        if isinstance(item, EndOfStream):
            self.on_stop()
            yield item
            return
        self._arm()


class ResetPeerStage(Stage):
    """``reset_peer``: the first item is dropped and ``timeout`` ms later the connection
    is closed with TCP RST. Later items are dropped. A pending reset is not cancelled
    by removal (as in the reference), only by the end of the connection.
    """

    def __init__(self, toxic: Toxic, link: LinkContext) -> None:
        super().__init__(toxic, link)
        self._timer: asyncio.TimerHandle | None = None
        self._triggered = False

    def on_stop(self) -> None:
        """Cancel a pending reset only when the connection itself ends."""

    def dispose(self) -> None:
        """The connection ended: a pending reset has nothing left to reset."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def pipe(self, item: Item) -> AsyncGenerator[Item, None]:
        """Drop the item; on the first one, schedule the reset."""
        if not self._triggered:
            self._triggered = True
            attrs = self.toxic.attributes
            assert isinstance(attrs, ResetPeerAttributes)
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(attrs.timeout / 1000, self.link.reset_connection)
        return
        yield  # pragma: no cover - makes this an async generator


def slice_bounds(length: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Return the cut points splitting ``length`` bytes as the slicer toxic does.

    A span is kept whole when ``span - average <= variation``; otherwise it is cut at its
    midpoint shifted by a random integer in ``[-variation, variation)`` and both halves are
    split again. ``average <= 0`` is treated as 1 and the cut is kept inside the span (the
    reference recurses forever or slices out of range there).

    Returns:
        Increasing offsets ``[0, c1, ..., length]``; consecutive pairs are the pieces.
    """
    average = max(1, average)
    cuts = [0]
    stack = [(0, length)]
    while stack:
        start, end = stack.pop()
        if (end - start) - average <= variation:
            cuts.append(end)
            continue
        middle = start + (end - start) // 2
        if variation > 0:
            middle += rng.randrange(2 * variation) - variation
        middle = min(max(middle, start + 1), end - 1)
        stack.append((middle, end))
        stack.append((start, middle))
    return cuts


class SlicerStage(Stage):
    """``slicer``: emit each chunk as several pieces, ``delay`` µs apart."""

    async def pipe(self, item: Item) -> AsyncGenerator[Item, None]:
        """Cut a chunk into pieces; an interrupt emits the unsent rest as one piece."""
        generation = self.generation()
        if not isinstance(item, Chunk):
            yield item
            return
        attrs = self.toxic.attributes
        assert isinstance(attrs, SlicerAttributes)
        cuts = slice_bounds(len(item.data), attrs.average_size, attrs.size_variation, self.link.rng)
        delay_s = attrs.delay / 1_000_000
        for index in range(1, len(cuts)):
            yield Chunk(item.data[cuts[index - 1] : cuts[index]], item.stamp)
            if await self.sleep(delay_s, generation) and index < len(cuts) - 1:
                yield Chunk(item.data[cuts[index] :], item.stamp)
                return


class LimitDataStage(Stage):
    """``limit_data``: forward up to ``bytes`` bytes on this link, then end it.

    The count belongs to the link and survives updates of the toxic.
    """

    def __init__(self, toxic: Toxic, link: LinkContext) -> None:
        super().__init__(toxic, link)
        self.forwarded = 0

    async def pipe(self, item: Item) -> AsyncGenerator[Item, None]:
        """Truncate the chunk crossing the limit, then end the stream."""
        if not isinstance(item, Chunk):
            yield item
            return
        attrs = self.toxic.attributes
        assert isinstance(attrs, LimitDataAttributes)
        remaining = attrs.bytes - self.forwarded
        if remaining <= 0:
            yield EOF
            return
        data = item.data[:remaining]
        self.forwarded += len(data)
        yield Chunk(data, item.stamp)
        if self.forwarded >= attrs.bytes:
            yield EOF


@dataclass(frozen=True, slots=True)
class ToxicType:
    """A toxic type: its attribute model and its per-link behaviour."""

    name: str
    attributes: type[Attributes]
    stage: Callable[[Toxic, LinkContext], Stage]
    holds_many: bool = False
    """True when the stage keeps many chunks in flight (latency): the link then lets its
    source run up to 1024 chunks ahead, as the reference's latency buffer does."""


TOXIC_TYPES: dict[str, ToxicType] = {
    kind.name: kind
    for kind in (
        ToxicType("noop", NoopAttributes, NoopStage),
        ToxicType("latency", LatencyAttributes, LatencyStage, holds_many=True),
        ToxicType("bandwidth", BandwidthAttributes, BandwidthStage),
        ToxicType("slow_close", SlowCloseAttributes, SlowCloseStage),
        ToxicType("timeout", TimeoutAttributes, TimeoutStage),
        ToxicType("reset_peer", ResetPeerAttributes, ResetPeerStage),
        ToxicType("slicer", SlicerAttributes, SlicerStage),
        ToxicType("limit_data", LimitDataAttributes, LimitDataStage),
    )
}
"""Every toxic type the API accepts, by name."""
