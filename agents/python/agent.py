#!/usr/bin/env python3
"""brokerbench's Python consumer agent (docs/cross-language.md).

Consumes one consumer group from one broker with Python's usual client
library (RabbitMQ: aio-pika, JetStream: nats-py, Kafka: confluent-kafka),
the way a well-written asyncio service would, and writes a 48-byte receipt
per delivery to stdout. Its configuration is JSON in the environment
variable BROKERBENCH_AGENT_CONFIG (never argv: a URL in it may carry a
password, and every user can read a process's command line); anything it
has to say goes to stderr. `agent.py --self-check` checks the failure hash
and the event decoder against vectors brokerbench's Rust implementation is
held to too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import struct
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

log = logging.getLogger("brokerbench-agent")

# Every network call is given this long (brokerbench's CALL_TIMEOUT).
CALL_TIMEOUT = 10.0
# How long a dead letter may wait for the broker's confirmation (CONFIRM_TIMEOUT).
CONFIRM_TIMEOUT = 30.0
# After SIGTERM: how long messages being processed may take to finish, then
# how long closing the connection may take (brokerbench kills after 5 s).
STOP_GRACE = 2.0
CLOSE_TIMEOUT = 2.0

# ---------------------------------------------------------------- receipts

RECEIPT = struct.Struct("<BBBBIQQQQQ")
assert RECEIPT.size == 48

READY, DELIVERY, FOREIGN, DECODE_FAILED = 1, 2, 3, 4
PROCESSED, SKIPPED, FAILED, DEAD_LETTERED, REFUSED = 0, 1, 2, 3, 4
# Flag bits: the broker flagged it redelivered; (decode failed only) the
# envelope was read, and it is this run's.
REDELIVERED, ENVELOPE_READ = 0x1, 0x2


class Receipts:
    """Receipts on stdout, written in batches: at 64 pending, or 5 ms after
    the first of a batch."""

    BATCH = 64
    DELAY = 0.005

    def __init__(self, out: Any, loop: asyncio.AbstractEventLoop, on_broken: Callable[[], None]):
        self.out = out
        self.loop = loop
        self.on_broken = on_broken
        self.buf = bytearray()
        self.pending = 0
        self.timer: Optional[asyncio.TimerHandle] = None
        self.broken = False

    def ready(self) -> None:
        self.buf += RECEIPT.pack(READY, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        self.flush()

    def delivery(self, kind: int, redelivered: bool, action: int, attempt: int,
                 bench: Optional["Bench"], received_ns: int, envelope_read: bool = False) -> None:
        if bench is None:
            producer = seq = key = intended = sent = 0
        else:
            producer, seq, key = bench.producer, bench.seq, bench.key
            intended, sent = bench.intended_ns, bench.sent_ns
        flags = (REDELIVERED if redelivered else 0) | (ENVELOPE_READ if envelope_read else 0)
        self.buf += RECEIPT.pack(kind, flags, action, min(attempt, 255),
                                 producer, seq, key, intended, sent, received_ns)
        self.pending += 1
        if self.pending >= self.BATCH:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(self.DELAY, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.buf or self.broken:
            return
        data, self.buf, self.pending = bytes(self.buf), bytearray(), 0
        try:
            self.out.write(data)
            self.out.flush()
        except (BrokenPipeError, OSError) as e:
            # brokerbench is gone: nobody reads what we do any more.
            self.broken = True
            log.error("stdout: %s; stopping", e)
            self.on_broken()


# ------------------------------------------------------------------ event

U64 = 1 << 64
U32 = 1 << 32


class DecodeError(ValueError):
    pass


def _uint(obj: dict, name: str, limit: int = U64) -> int:
    value = obj.get(name)
    if type(value) is not int or not 0 <= value < limit:
        raise DecodeError(f"bench.{name} is not an unsigned integer below {limit}: {value!r}")
    return value


def _text(obj: dict, name: str) -> str:
    value = obj.get(name)
    if type(value) is not str:
        raise DecodeError(f"{name} is not a string: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Bench:
    """The benchmark's envelope: who sent the message, when it should have
    been sent and when it was (ns since the run's epoch)."""

    run: int
    producer: int
    seq: int
    key: int
    intended_ns: int
    sent_ns: int

    @classmethod
    def from_json(cls, obj: Any) -> "Bench":
        if type(obj) is not dict:
            raise DecodeError("bench is not an object")
        return cls(
            run=_uint(obj, "run"),
            producer=_uint(obj, "producer", U32),
            seq=_uint(obj, "seq"),
            key=_uint(obj, "key"),
            intended_ns=_uint(obj, "intended_ns"),
            sent_ns=_uint(obj, "sent_ns"),
        )


@dataclass(frozen=True, slots=True)
class OrderCreated:
    """`events.order.created`, v1 or v2 (v1 plus `currency`, a compatible
    addition; docs/cross-language.md, schema evolution). Fields it does not
    know (a later addition's, the padding) are ignored; another version, a
    required field missing or null, or one of the wrong type is refused."""

    version: str
    order_id: str
    user_id: str
    total: float
    timestamp: str
    trace_id: str
    bench: Bench
    currency: Optional[str] = None

    VERSIONS = ("v1", "v2")

    @classmethod
    def from_json(cls, obj: Any) -> "OrderCreated":
        if type(obj) is not dict:
            raise DecodeError("the event is not an object")
        version = _text(obj, "version")
        if version not in cls.VERSIONS:
            raise DecodeError(f"version {version!r}, not one of {cls.VERSIONS!r}")
        total = obj.get("total")
        if type(total) not in (int, float):  # bool is neither
            raise DecodeError(f"total is not a number: {total!r}")
        currency = None
        if version == "v2" and obj.get("currency") is not None:
            currency = _text(obj, "currency")
        return cls(
            version=version,
            order_id=_text(obj, "order_id"),
            user_id=_text(obj, "user_id"),
            total=float(total),
            timestamp=_text(obj, "timestamp"),
            trace_id=_text(obj, "trace_id"),
            bench=Bench.from_json(obj.get("bench")),
            currency=currency,
        )


# brokerbench's binary encoding (`encoding = "binary"`, for messages below
# the JSON event's size): magic, layout version, run, producer, seq, key,
# intended and sent instants, trace id; zero padding after.
BINARY = struct.Struct("<BBQIQQQQ16s")
BINARY_VERSION = 2


@dataclass(frozen=True, slots=True)
class OrderEnvelope:
    """A binary-encoded message: the envelope and trace id only; its order
    id is derived as brokerbench writes it (`ord-<run hex>-<producer>-<seq>`)."""

    bench: Bench
    trace_id: str

    @property
    def order_id(self) -> str:
        b = self.bench
        return f"ord-{b.run:x}-{b.producer}-{b.seq}"


def decode(payload: bytes) -> tuple[Optional[OrderCreated | OrderEnvelope], Optional[Bench]]:
    """The event, or None and as much of its envelope as could be read."""
    if payload[:1] == b"\xbb":
        if len(payload) < BINARY.size:
            return None, None
        _, version, run, producer, seq, key, intended, sent, trace = BINARY.unpack_from(payload)
        if version != BINARY_VERSION:
            return None, None
        bench = Bench(run, producer, seq, key, intended, sent)
        return OrderEnvelope(bench, trace[::-1].hex()), bench
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None, None
    try:
        event = OrderCreated.from_json(obj)
        return event, event.bench
    except DecodeError:
        try:
            return None, Bench.from_json(obj.get("bench")) if type(obj) is dict else None
        except DecodeError:
            return None, None


# --------------------------------------------------------------- failures

MASK = U64 - 1


def _mix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def unit_hash(seed: int, producer: int, seq: int) -> float:
    """A number in [0, 1) from the group's seed and the message's number,
    as brokerbench's `unit_hash` (src/scenario/mod.rs) computes it."""
    z = _mix(_mix((seed ^ producer) & MASK) ^ (seq & MASK))
    return (z >> 11) / float(1 << 53)


def group_seed(group: str) -> int:
    """FNV-1a 64 over the group's name (`Failures::seed`); the seed comes in
    the configuration, this is for the self-check."""
    h = 0xCBF29CE484222325
    for b in group.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def self_check() -> None:
    """The fates hash as brokerbench's do: ../fate-vectors.json; and the
    decoder takes and refuses what brokerbench's does: ../event-vectors.json.
    brokerbench's own unit tests check both too."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "fate-vectors.json")) as f:
        vectors = json.load(f)
    for s in vectors["seeds"]:
        assert group_seed(s["group"]) == int(s["seed"]), (s, group_seed(s["group"]))
    assert len(vectors["unit_hash"]) >= 5
    for v in vectors["unit_hash"]:
        got = unit_hash(int(v["seed"]), v["producer"], int(v["seq"]))
        assert got == v["u"], (v, got)
    with open(os.path.join(here, "..", "event-vectors.json")) as f:
        vectors = json.load(f)["vectors"]
    assert any(v["decodes"] for v in vectors) and not all(v["decodes"] for v in vectors)
    for v in vectors:
        event, bench = decode(v["payload"].encode())
        assert (event is not None) == v["decodes"], (v["name"], event)
        b = v["bench"]
        want = None if b is None else Bench(
            run=int(b["run"]), producer=int(b["producer"]), seq=int(b["seq"]), key=int(b["key"]),
            intended_ns=int(b["intended_ns"]), sent_ns=int(b["sent_ns"]))
        # The envelope a decode-failed receipt carries (or, taken, the event's).
        assert bench == want, (v["name"], bench, want)


@dataclass(frozen=True, slots=True)
class Failures:
    seed: int
    poison: float
    transient: float
    transient_attempts: int

    def fails(self, producer: int, seq: int, failed: int) -> bool:
        """Whether attempt `failed + 1` of message (producer, seq) fails."""
        u = unit_hash(self.seed, producer, seq)
        if u < self.poison:
            return True
        if u < self.poison + self.transient:
            return failed < self.transient_attempts
        return False


# ------------------------------------------------------------------ agent


class Fatal(Exception):
    """Nothing to retry: what to consume does not exist."""


class Stopped(Exception):
    """Told to stop while waiting for the broker."""


def backoff(attempt: int, cap_s: float) -> float:
    """1 s, 2 s, 4 s ... capped, less up to 20 % of jitter (brokerbench's own)."""
    return min(float(1 << min(attempt, 20)), cap_s) * (1.0 - 0.2 * random.random())


async def timed(what: str, awaitable: Any, timeout: float = CALL_TIMEOUT) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"{what}: no answer within {timeout:g} s") from None


class Agent:
    def __init__(self, config: dict, out: Any):
        self.config = config
        self.out = out
        self.broker = config["broker"]
        self.url = config["url"]
        self.group = config["group"]
        self.run_id = int(config["run"])
        self.epoch_ns = int(config["epoch_ns"])
        self.concurrency = max(1, int(config.get("concurrency") or 1))
        self.processing_s = int(config.get("processing_ns") or 0) / 1e9
        self.backoff_max_s = max(1.0, int(config.get("backoff_max_ms") or 30000) / 1000)
        f = config.get("failures")
        self.failures = None if f is None else Failures(
            seed=int(f["seed"]), poison=float(f["poison"]), transient=float(f["transient"]),
            transient_attempts=int(f["transient_attempts"]))
        self.source: dict = config.get("source") or {}
        # Idempotency on the order id, and failed attempts per order id.
        self.processed: set[str] = set()
        self.failed: dict[str, int] = {}
        self.stop = asyncio.Event()
        self.is_ready = False
        self.queue: deque = deque()
        self.queued = asyncio.Event()
        self.closing = False
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.receipts: Receipts

    # ---------------------------------------------------------- plumbing

    def ready(self) -> None:
        if not self.is_ready:
            self.is_ready = True
            self.receipts.ready()
            log.info("group %s: subscribed on %s", self.group, self.broker)

    def enqueue(self, delivery: Any) -> None:
        if self.closing:
            return  # never started: unacknowledged, so the broker has it again
        self.queue.append(delivery)
        self.queued.set()

    def drop_queued(self) -> list:
        """Takes back what no worker has started on."""
        dropped = list(self.queue)
        self.queue.clear()
        self.queued.clear()
        return dropped

    async def sleep_or_stop(self, seconds: float) -> None:
        """Sleeps; raises Stopped if told to stop meanwhile."""
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except asyncio.TimeoutError:
            return
        raise Stopped

    async def until_stopped(self, awaitable: Any) -> Any:
        """`awaitable`'s result, or Stopped (and it cancelled) if told to stop first."""
        task = asyncio.ensure_future(awaitable)
        stop = asyncio.create_task(self.stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Stopped

    async def worker(self) -> None:
        while True:
            while not self.queue or self.closing:
                self.queued.clear()
                await self.queued.wait()
            delivery = self.queue.popleft()
            self.busy += 1
            self.idle.clear()
            try:
                while await self.handle(delivery):
                    pass  # Kafka: failed, retried in process
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handling a delivery")
            finally:
                self.busy -= 1
                if self.busy == 0:
                    self.idle.set()

    async def handle(self, d: Any) -> bool:
        """One delivery: decode, decide, process or fail, settle, receipt.
        True if it is to be handled again (Kafka's in-process retry)."""
        received = time.monotonic_ns() - self.epoch_ns
        event, bench = decode(d.payload)
        attempt = 0
        envelope_read = False
        if event is None:
            kind = DECODE_FAILED
            if bench is not None and bench.run == self.run_id:
                # This run's, but not an event we take: refused for good, not
                # retried, processed or remembered.
                action, envelope_read = REFUSED, True
                await d.refuse()
            else:
                # Nobody's we know of: reported with zeros, and acknowledged.
                action, bench = PROCESSED, None
                await d.ack()
        elif event.bench.run != self.run_id:
            kind, action = FOREIGN, PROCESSED
            await d.ack()
        else:
            kind = DELIVERY
            action, attempt = self.decide(event)
            if action != SKIPPED and self.processing_s > 0:
                await asyncio.sleep(self.processing_s)
            if action == FAILED:
                action = await d.fail(attempt)
            else:
                await d.ack()
        self.receipts.delivery(kind, d.redelivered, action, attempt, bench, max(received, 0),
                               envelope_read)
        return action == FAILED and getattr(d, "again", False)

    def decide(self, event: OrderCreated | OrderEnvelope) -> tuple[int, int]:
        """Skip, fail on purpose (with the attempt) or process; recorded at
        once, so that a concurrent duplicate sees it."""
        order_id = event.order_id
        if order_id in self.processed:
            return SKIPPED, 0
        if self.failures is not None:
            failed = self.failed.get(order_id, 0)
            if self.failures.fails(event.bench.producer, event.bench.seq, failed):
                self.failed[order_id] = failed + 1
                return FAILED, failed + 1
            self.failed.pop(order_id, None)
        self.processed.add(order_id)
        return PROCESSED, 0

    async def finish_work(self) -> list:
        """After SIGTERM: no new work; what is being processed may finish
        (and be settled) for a moment. Returns what was never started."""
        self.closing = True
        left = self.drop_queued()
        try:
            await asyncio.wait_for(self.idle.wait(), STOP_GRACE)
        except asyncio.TimeoutError:
            log.warning("%d deliveries still in progress at stop", self.busy)
        for w in self.workers:
            w.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        return left

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        self.receipts = Receipts(self.out, loop, self.stop.set)
        self.workers = [asyncio.create_task(self.worker()) for _ in range(self.concurrency)]
        session = {"rabbitmq": self.rabbitmq, "jetstream": self.jetstream,
                   "kafka": self.kafka}.get(self.broker)
        if session is None:
            log.error("unknown broker %r", self.broker)
            return 2
        try:
            await session()
        except Stopped:
            await self.finish_work()
        except Fatal as e:
            log.error("group %s: %s", self.group, e)
            return 1
        finally:
            for w in self.workers:
                w.cancel()
            self.receipts.flush()
        return 0

    # ---------------------------------------------------------- RabbitMQ

    async def rabbitmq(self) -> None:
        import aio_pika
        import aio_pika.exceptions

        src = self.source
        queue_name = src["queue"]
        prefetch = int(src.get("prefetch") or self.concurrency)
        requeue_failed = bool(src.get("requeue_failed", False))
        max_deliveries = int(src.get("max_deliveries") or 5)
        retry_delay = int(src.get("retry_delay_ms") or 0) / 1000
        agent = self

        class Delivery:
            __slots__ = ("message", "payload", "redelivered")

            def __init__(self, message: Any):
                self.message = message
                self.payload = message.body
                self.redelivered = bool(message.redelivered)

            async def ack(self) -> None:
                try:
                    await timed("basic.ack", self.message.ack())
                except Exception as e:
                    log.warning("ack: %s", e)

            async def fail(self, attempt: int) -> int:
                # RabbitMQ cannot delay a redelivery: the consumer waits. A
                # quorum queue counts deliveries and dead-letters at its
                # limit; a classic queue dead-letters what is rejected
                # without requeueing, at our count.
                await asyncio.sleep(retry_delay)
                requeue = requeue_failed or attempt < max_deliveries
                try:
                    await timed("basic.reject", self.message.reject(requeue=requeue))
                except Exception as e:
                    log.warning("reject: %s", e)
                return FAILED

            async def refuse(self) -> None:
                # Could not decode: not requeued (a classic queue
                # dead-letters it, if it has a dead-letter exchange).
                try:
                    await timed("basic.reject", self.message.reject(requeue=False))
                except Exception as e:
                    log.warning("reject: %s", e)

        async def on_message(message: Any) -> None:
            agent.enqueue(Delivery(message))

        async def subscribe(lost: asyncio.Event) -> Any:
            """One connection and channel, consuming; None if it failed."""
            connection = None
            try:
                connection = await timed("connecting to RabbitMQ", aio_pika.connect(
                    self.url, timeout=CALL_TIMEOUT,
                    client_properties={"connection_name": f"brokerbench-agent-python-{self.group}"}))
                connection.close_callbacks.add(lambda *_: lost.set())
                channel = await timed("opening a channel", connection.channel(publisher_confirms=False))
                channel.close_callbacks.add(lambda *_: lost.set())
                await timed("basic.qos", channel.set_qos(prefetch_count=prefetch))
                try:
                    queue = await timed("looking up the queue", channel.get_queue(queue_name, ensure=True))
                except aio_pika.exceptions.ChannelNotFoundEntity as e:
                    raise Fatal(f"queue {queue_name} does not exist: {e}") from e
                await timed("basic.consume", queue.consume(on_message, no_ack=False))
                return connection
            except BaseException as e:
                await self.close_rabbitmq(connection)
                if isinstance(e, Exception) and not isinstance(e, Fatal):
                    log.warning("RabbitMQ: %s; again in a while", e or type(e).__name__)
                    return None
                raise

        attempt = 0
        while True:
            lost = asyncio.Event()
            connection = await self.until_stopped(subscribe(lost))
            if connection is None:
                await self.sleep_or_stop(backoff(attempt, self.backoff_max_s))
                attempt += 1
                continue
            self.ready()
            try:
                await self.until_stopped(lost.wait())
            except Stopped:
                # What no worker started goes back to the queue when the
                # channel closes; what they are on is settled first.
                await self.finish_work()
                self.receipts.flush()
                await self.close_rabbitmq(connection)
                return
            # Lost: what was delivered but not acknowledged comes back, flagged
            # redelivered, on the next channel.
            log.warning("RabbitMQ: connection or channel lost; reconnecting")
            self.drop_queued()
            await self.close_rabbitmq(connection)
            await self.sleep_or_stop(backoff(0, self.backoff_max_s))
            attempt = 1

    @staticmethod
    async def close_rabbitmq(connection: Any) -> None:
        if connection is None:
            return
        try:
            await timed("closing the connection", connection.close(), CLOSE_TIMEOUT)
        except Exception as e:
            log.debug("closing: %s", e)

    # --------------------------------------------------------- JetStream

    async def jetstream(self) -> None:
        import nats
        import nats.errors
        import nats.js.errors

        src = self.source
        stream, durable = src["stream"], src["durable"]
        nak_delay = int(src.get("nak_delay_ms") or 0) / 1000
        terminate_at = src.get("terminate_at")
        # Fetched and not yet finished: refilled when half is done.
        capacity = max(2 * self.concurrency, 128)
        agent = self

        class Delivery:
            __slots__ = ("msg", "payload", "delivered", "redelivered")

            def __init__(self, msg: Any):
                self.msg = msg
                self.payload = msg.data
                try:
                    self.delivered = msg.metadata.num_delivered
                except Exception:
                    self.delivered = 1
                self.redelivered = self.delivered > 1

            async def settle(self, what: str, call: Any) -> None:
                """Sends one settlement (a failed one is logged, the broker
                redelivers); the pull's slot is free either way."""
                try:
                    await timed(what, call)
                except Exception as e:
                    log.warning("%s: %s", what, e)
                finally:
                    agent.js_done()

            async def ack(self) -> None:
                await self.settle("ack", self.msg.ack())

            async def fail(self, attempt: int) -> int:
                # NAK with the retry delay (the server counts deliveries and
                # stops at max_deliver), or TERM at the last delivery.
                if terminate_at is not None and self.delivered >= int(terminate_at):
                    await self.settle("term", self.msg.term())
                else:
                    await self.settle("nak", self.msg.nak(delay=nak_delay or None))
                return FAILED

            async def refuse(self) -> None:
                # Could not decode: TERM, never delivered again.
                await self.settle("term", self.msg.term())

        def reconnect_delay(servers: list, _info: dict) -> tuple:
            # nats-py asks before every reconnection attempt; `reconnects`
            # counts the failed ones since the connection was lost.
            return servers[0], backoff(servers[0].reconnects, self.backoff_max_s)

        async def on_error(e: Exception) -> None:
            log.warning("NATS: %s", e or type(e).__name__)

        async def on_reconnected() -> None:
            log.warning("NATS: reconnected")

        self.js_outstanding = 0
        self.js_room = asyncio.Event()
        self.js_room.set()
        self.js_low = capacity // 2

        closing = False

        async def connect() -> Any:
            # nats-py's first connection retries forever at a fixed interval:
            # two quick tries here, our backoff between rounds. Once
            # connected, it reconnects for ever with reconnect_delay.
            nc = await timed("connecting to NATS", nats.connect(
                self.url, name=f"brokerbench-agent-python-{self.group}",
                connect_timeout=int(CALL_TIMEOUT), allow_reconnect=True,
                max_reconnect_attempts=1, reconnect_time_wait=0,
                reconnect_to_server_handler=reconnect_delay,
                ping_interval=10, max_outstanding_pings=2, flush_timeout=CALL_TIMEOUT,
                error_cb=on_error, disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected))
            nc.options["max_reconnect_attempts"] = -1
            return nc

        async def on_disconnected() -> None:
            if not closing and not self.stop.is_set():
                log.warning("NATS: disconnected; reconnecting")

        attempt = 0
        while True:
            try:
                nc = await self.until_stopped(connect())
                break
            except (Stopped, Fatal):
                raise
            except Exception as e:
                log.warning("NATS: %s; again in a while", e or type(e).__name__)
                await self.sleep_or_stop(backoff(attempt, self.backoff_max_s))
                attempt += 1
        try:
            js = nc.jetstream(timeout=CALL_TIMEOUT)

            async def bind() -> Any:
                # The durable consumer is brokerbench's: bound to, never made or changed.
                await js.consumer_info(stream, durable, timeout=CALL_TIMEOUT)
                return await timed("binding the pull consumer",
                                   js.pull_subscribe_bind(durable=durable, stream=stream))

            attempt = 0
            while True:
                try:
                    sub = await self.until_stopped(bind())
                    break
                except nats.js.errors.NotFoundError as e:
                    raise Fatal(f"durable consumer {durable} of stream {stream}: {e}") from e
                except (Stopped, Fatal):
                    raise
                except Exception as e:
                    log.warning("JetStream: %s; again in a while", e or type(e).__name__)
                    await self.sleep_or_stop(backoff(attempt, self.backoff_max_s))
                    attempt += 1
            self.ready()
            try:
                while True:
                    if not self.js_room.is_set():
                        await self.until_stopped(self.js_room.wait())
                        continue
                    batch = capacity - self.js_outstanding
                    try:
                        # Cancelled when told to stop: what the pull request
                        # still brings is never acknowledged, so the server
                        # delivers it again.
                        msgs = await self.until_stopped(
                            timed("fetching", sub.fetch(batch, timeout=5.0), 5.0 + CALL_TIMEOUT))
                    except (nats.errors.TimeoutError, asyncio.TimeoutError, TimeoutError):
                        continue
                    except Stopped:
                        raise
                    except Exception as e:
                        log.warning("fetch: %s", e or type(e).__name__)
                        if nc.is_closed:
                            raise Fatal("the NATS connection closed for good") from e
                        await self.sleep_or_stop(0.1)
                        continue
                    for msg in msgs:
                        self.js_outstanding += 1
                        self.enqueue(Delivery(msg))
                    if self.js_outstanding >= capacity:
                        self.js_room.clear()
            except Stopped:
                pass
            left = await self.finish_work()
            # What was fetched but never started: back for another consumer now,
            # not after the ack wait.
            for d in left:
                try:
                    await timed("nak", d.msg.nak(), 0.5)
                except Exception:
                    break
            self.receipts.flush()
        finally:
            closing = True
            try:
                await timed("closing the connection", nc.close(), CLOSE_TIMEOUT)
            except Exception as e:
                log.debug("closing: %s", e)

    def js_done(self) -> None:
        self.js_outstanding -= 1
        if self.js_outstanding <= self.js_low:
            self.js_room.set()

    # ------------------------------------------------------------- Kafka

    async def kafka(self) -> None:
        from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

        src = self.source
        topic, group_id = src["topic"], src["group_id"]
        dead_letter_topic = src.get("dead_letter_topic")
        max_deliveries = int(src.get("max_deliveries") or 5)
        retry_delay = int(src.get("retry_delay_ms") or 0) / 1000
        bootstrap = self.url.split("://", 1)[-1]
        loop = asyncio.get_running_loop()
        # One thread polls the consumer (its calls block); another flushes
        # the dead-letter producer.
        polling = ThreadPoolExecutor(1, thread_name_prefix="kafka-poll")
        flushing = ThreadPoolExecutor(1, thread_name_prefix="kafka-dlt")
        capacity = max(2 * self.concurrency, 128)

        common = {
            "bootstrap.servers": bootstrap,
            "client.id": f"brokerbench-agent-python-{self.group}",
            "socket.timeout.ms": int(CALL_TIMEOUT * 1000),
            # librdkafka's own exponential reconnect backoff, with jitter.
            "reconnect.backoff.ms": 1000,
            "reconnect.backoff.max.ms": int(self.backoff_max_s * 1000),
            "log_level": 3,
            "error_cb": lambda e: log.warning("Kafka: %s", e),
        }
        consumer_config = {
            **common,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            # Offsets are committed every second, but only those stored,
            # and an offset is stored only once every message before it is
            # processed (or dead-lettered).
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "enable.auto.offset.store": False,
        }
        if src.get("fetch_wait_max_ms") is not None:
            consumer_config["fetch.wait.max.ms"] = int(src["fetch_wait_max_ms"])
        consumer = Consumer(consumer_config)
        producer = None
        if self.failures is not None:
            if not dead_letter_topic:
                raise Fatal("a group with failures needs source.dead_letter_topic")
            producer = Producer({
                **common,
                "acks": "all",
                "enable.idempotence": True,
                "request.timeout.ms": int(CALL_TIMEOUT * 1000),
                "message.timeout.ms": int(CONFIRM_TIMEOUT * 1000),
            })

        # Per partition: offsets received and not yet done, and the next offset.
        pending: dict[int, set[int]] = {}
        next_offset: dict[int, int] = {}
        # Received and not yet done, across partitions: polled up to `capacity`.
        outstanding = 0
        room = asyncio.Event()
        room.set()

        def done(partition: int, offset: int) -> None:
            """A message is processed, skipped or dead-lettered: for good."""
            nonlocal outstanding
            outstanding -= 1
            if outstanding <= capacity // 2:
                room.set()
            waiting = pending[partition]
            waiting.discard(offset)
            low = min(waiting) if waiting else next_offset[partition]
            # Never past a message still being processed or retried.
            if low > 0:
                try:
                    consumer.store_offsets(offsets=[TopicPartition(topic, partition, low)])
                except KafkaException as e:
                    # Revoked meanwhile: its new owner reads it again.
                    log.debug("store_offsets: %s", e)

        async def dead_letter(d: "Delivery", reason: str) -> bool:
            """Produces the message to the dead-letter topic with where it
            came from (Spring Kafka's headers) and waits for the broker."""
            headers = [
                ("kafka_dlt-original-topic", topic.encode()),
                ("kafka_dlt-original-partition", struct.pack(">i", d.partition)),
                ("kafka_dlt-original-offset", struct.pack(">q", d.offset)),
                ("kafka_dlt-original-consumer-group", group_id.encode()),
                ("kafka_dlt-exception-message", reason.encode()),
            ]
            if d.trace_id is not None:
                headers.append(("trace_id", d.trace_id))
            confirmed = loop.create_future()

            def report(err: Any, _msg: Any) -> None:
                def settle() -> None:
                    if not confirmed.done():
                        confirmed.set_result(err)
                loop.call_soon_threadsafe(settle)

            deadline = time.monotonic() + CONFIRM_TIMEOUT
            while True:
                try:
                    producer.produce(dead_letter_topic, value=d.payload, key=d.key,
                                     headers=headers, on_delivery=report)
                    break
                except BufferError:
                    if time.monotonic() > deadline:
                        return False
                    await asyncio.sleep(0.01)
                except KafkaException as e:
                    log.warning("dead letter: %s", e)
                    return False
            try:
                await timed("flushing the dead letter",
                            loop.run_in_executor(flushing, producer.flush, CONFIRM_TIMEOUT),
                            CONFIRM_TIMEOUT + CALL_TIMEOUT)
                err = await timed("the dead letter's confirmation", confirmed, CALL_TIMEOUT)
            except Exception as e:
                log.warning("dead letter: %s", e)
                return False
            if err is not None:
                log.warning("dead letter refused: %s", err)
                return False
            return True

        class Delivery:
            __slots__ = ("payload", "key", "trace_id", "partition", "offset", "again")
            redelivered = False  # Kafka has no such flag

            def __init__(self, msg: Any):
                self.payload = msg.value() or b""
                self.partition = msg.partition()
                self.offset = msg.offset()
                self.again = False
                if producer is not None:  # only a group with failures may dead-letter it
                    self.key = msg.key()
                    self.trace_id = next((v for k, v in (msg.headers() or []) if k == "trace_id"), None)
                else:
                    self.key = self.trace_id = None

            async def ack(self) -> None:
                self.again = False
                done(self.partition, self.offset)

            async def fail(self, attempt: int) -> int:
                if attempt >= max_deliveries:
                    # The offset moves on only once the dead letter is confirmed.
                    if await dead_letter(self, f"processing failed {attempt} times"):
                        self.again = False
                        done(self.partition, self.offset)
                        return DEAD_LETTERED
                # Delivered again in process after the delay (the worker
                # handles it again), its offset held back meanwhile.
                await asyncio.sleep(retry_delay)
                self.again = True
                return FAILED

            async def refuse(self) -> None:
                # Could not decode: dead-lettered when the group has a
                # dead-letter topic (the offset moves on only once that is
                # confirmed; tried again until it is, or until stopped), then
                # committed as if processed; dropped otherwise.
                self.again = False
                if producer is not None:
                    while not await dead_letter(self, "could not decode the event"):
                        await asyncio.sleep(max(retry_delay, 0.1))
                done(self.partition, self.offset)

        assigned = []

        def on_assign(_consumer: Any, partitions: list) -> None:
            assigned.append(len(partitions))

        def poll(n: int) -> list:
            """In the polling thread: one message within 100 ms, then what
            else is there without waiting."""
            first = consumer.poll(0.1)
            if first is None:
                return []
            return [first] + (consumer.consume(n - 1, 0) if n > 1 else [])

        try:
            consumer.subscribe([topic], on_assign=on_assign)
            deadline = time.monotonic() + 30
            while not self.stop.is_set():
                if outstanding >= capacity:
                    room.clear()
                    stop = asyncio.create_task(self.stop.wait())
                    wait = asyncio.create_task(room.wait())
                    await asyncio.wait({stop, wait}, return_when=asyncio.FIRST_COMPLETED)
                    stop.cancel()
                    wait.cancel()
                    continue
                try:
                    msgs = await timed("polling", loop.run_in_executor(polling, poll, capacity - outstanding))
                except TimeoutError as e:
                    log.warning("Kafka: %s", e)
                    continue
                if not self.is_ready:
                    # Ready once the group gave us partitions; a message that
                    # came meanwhile is kept.
                    if assigned and sum(assigned) > 0:
                        self.ready()
                    elif time.monotonic() > deadline:
                        raise Fatal(f"consumer group {group_id} got no partitions of {topic} within 30 s")
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("Kafka: %s", err)
                            if err.fatal():
                                raise Fatal(f"Kafka: {err}")
                        continue
                    d = Delivery(msg)
                    pending.setdefault(d.partition, set()).add(d.offset)
                    next_offset[d.partition] = max(next_offset.get(d.partition, 0), d.offset + 1)
                    outstanding += 1
                    self.enqueue(d)
            await self.finish_work()
            self.receipts.flush()
        finally:
            # Closing commits the stored offsets and leaves the group.
            try:
                await timed("closing the consumer", loop.run_in_executor(polling, consumer.close),
                            CLOSE_TIMEOUT)
            except Exception as e:
                log.warning("closing the consumer: %s", e)
            if producer is not None:
                try:
                    await timed("flushing the producer",
                                loop.run_in_executor(flushing, producer.flush, 1.0), CLOSE_TIMEOUT)
                except Exception as e:
                    log.debug("flushing: %s", e)
            polling.shutdown(wait=False)
            flushing.shutdown(wait=False)


# Where brokerbench puts the configuration.
CONFIG_VARIABLE = "BROKERBENCH_AGENT_CONFIG"


def main() -> int:
    if len(sys.argv) == 2 and sys.argv[1] == "--self-check":
        self_check()
        print("unit_hash, the group seed and the event decoder match brokerbench's vectors",
              file=sys.stderr)
        return 0
    if len(sys.argv) != 1 or CONFIG_VARIABLE not in os.environ:
        print(f"usage: {CONFIG_VARIABLE}='<configuration JSON>' agent.py | agent.py --self-check",
              file=sys.stderr)
        return 2
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Receipts only on stdout: anything printed goes to stderr.
    out = sys.stdout.buffer
    sys.stdout = sys.stderr
    try:
        config = json.loads(os.environ.pop(CONFIG_VARIABLE))
        self_check()
    except Exception as e:
        log.error("bad configuration: %s", e)
        return 2
    return asyncio.run(Agent(config, out).run())


if __name__ == "__main__":
    sys.exit(main())
