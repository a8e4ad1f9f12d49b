#!/usr/bin/env node
// brokerbench's Node consumer agent (docs/cross-language.md).
//
// Consumes one consumer group from one broker with Node's usual client
// library (RabbitMQ: amqplib, JetStream: @nats-io/jetstream, Kafka: kafkajs),
// the way a well-written Node service would, and writes a 48-byte receipt per
// delivery to stdout. Its configuration is JSON in the environment variable
// BROKERBENCH_AGENT_CONFIG (never argv: a URL in it may carry a password, and
// every user can read a process's command line); anything it has to say goes
// to stderr. `node agent.js --self-check` checks the failure hash
// and the event decoder against vectors shared with brokerbench's Rust
// implementation.
'use strict';

// stdout carries receipts only: whatever a library logs goes to stderr.
const { Console } = require('node:console');
globalThis.console = new Console({ stdout: process.stderr, stderr: process.stderr });
// kafkajs warns about its default partitioner on every producer; we only
// produce dead letters, with the message's own key.
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';

const fs = require('node:fs');
const path = require('node:path');

// Every network call is given this long (brokerbench's CALL_TIMEOUT).
const CALL_TIMEOUT_MS = 10_000;
// How long a dead letter may wait for the broker's confirmation.
const CONFIRM_TIMEOUT_MS = 30_000;
// After SIGTERM: how long messages being processed may take to finish, then
// how long closing the connection may take (brokerbench kills after 5 s).
const STOP_GRACE_MS = 2_000;
const CLOSE_TIMEOUT_MS = 2_000;
const EXIT_DEADLINE_MS = 4_500;

// ------------------------------------------------------------------ logging

function log(level, message) {
  process.stderr.write(`${new Date().toISOString()} ${level} brokerbench-agent: ${message}\n`);
}
const warn = (m) => log('WARNING', m);
const errorText = (e) => (e && (e.message || e.code || e.name)) || String(e);

// ----------------------------------------------------------------- receipts

const RECEIPT_BYTES = 48;
const READY = 1, DELIVERY = 2, FOREIGN = 3, DECODE_FAILED = 4;
const PROCESSED = 0, SKIPPED = 1, FAILED = 2, DEAD_LETTERED = 3, REFUSED = 4;
// Flags: the broker flagged it redelivered; (decode failed only) the
// envelope in the receipt was read.
const REDELIVERED = 0x1, ENVELOPE_READ = 0x2;

// Receipts on stdout, written in batches: one write per event-loop turn, or
// at once when 64 are pending.
class Receipts {
  static BATCH = 64;

  constructor(out, onBroken) {
    this.out = out;
    this.onBroken = onBroken;
    this.pending = [];
    this.scheduled = false;
    this.broken = false;
    this.lastWrite = Promise.resolve();
    out.on('error', (e) => this.fail(e));
  }

  fail(e) {
    if (this.broken) return;
    // brokerbench is gone: nobody reads what we do any more.
    this.broken = true;
    log('ERROR', `stdout: ${errorText(e)}; stopping`);
    this.onBroken();
  }

  ready() {
    const b = Buffer.alloc(RECEIPT_BYTES);
    b.writeUInt8(READY, 0);
    this.pending.push(b);
    this.flush();
  }

  // A decode-failed receipt with `bench` says its envelope was read.
  delivery(kind, redelivered, action, attempt, bench, receivedNs) {
    const b = Buffer.alloc(RECEIPT_BYTES);
    b.writeUInt8(kind, 0);
    b.writeUInt8((redelivered ? REDELIVERED : 0) | (kind === DECODE_FAILED && bench ? ENVELOPE_READ : 0), 1);
    b.writeUInt8(action, 2);
    b.writeUInt8(Math.min(attempt, 255), 3);
    if (bench) {
      b.writeUInt32LE(bench.producer, 4);
      b.writeBigUInt64LE(bench.seq, 8);
      b.writeBigUInt64LE(bench.key, 16);
      b.writeBigUInt64LE(bench.intendedNs, 24);
      b.writeBigUInt64LE(bench.sentNs, 32);
    }
    b.writeBigUInt64LE(receivedNs, 40);
    this.pending.push(b);
    if (this.pending.length >= Receipts.BATCH) {
      this.flush();
    } else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  flush() {
    this.scheduled = false;
    if (this.pending.length === 0 || this.broken) return;
    const data = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending);
    this.pending = [];
    this.lastWrite = new Promise((resolve) => {
      try {
        this.out.write(data, (e) => {
          if (e) this.fail(e);
          resolve();
        });
      } catch (e) {
        this.fail(e);
        resolve();
      }
    });
  }

  // Writes what is pending and waits until stdout has taken it all.
  async drain() {
    this.flush();
    await this.lastWrite;
  }
}

// -------------------------------------------------------------------- event

const U32 = 1n << 32n;
const U64 = 1n << 64n;
const utf8 = new TextDecoder('utf-8', { fatal: true });

class DecodeError extends Error {}

// The benchmark's envelope: who sent the message, when it should have been
// sent and when it was (ns since the run's epoch). Every field is a BigInt:
// `run` exceeds 2^53, which a JavaScript number cannot hold, so each is read
// from the payload's text and checked against what JSON.parse made of it.
class Bench {
  static FIELDS = ['run', 'producer', 'seq', 'key', 'intended_ns', 'sent_ns'];

  constructor(run, producer, seq, key, intendedNs, sentNs) {
    this.run = run;
    this.producer = producer; // a number: below 2^32
    this.seq = seq;
    this.key = key;
    this.intendedNs = intendedNs;
    this.sentNs = sentNs;
    Object.freeze(this);
  }

  // `obj` is the parsed `bench` object, `text` the whole payload's text.
  static fromJSON(obj, text) {
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
      throw new DecodeError('bench is not an object');
    }
    const raw = Bench.rawIntegers(text);
    const v = {};
    for (const name of Bench.FIELDS) {
      const parsed = obj[name];
      if (typeof parsed !== 'number' || !Number.isInteger(parsed) || parsed < 0) {
        throw new DecodeError(`bench.${name} is not an unsigned integer: ${JSON.stringify(parsed)}`);
      }
      const digits = raw.get(name);
      const exact = digits === undefined ? undefined : BigInt(digits);
      // The text's digits must be what JSON.parse read (rounded above 2^53).
      if (exact === undefined || Number(exact) !== parsed) {
        throw new DecodeError(`bench.${name}: cannot read its digits from the payload`);
      }
      const limit = name === 'producer' ? U32 : U64;
      if (exact >= limit) throw new DecodeError(`bench.${name} is not below ${limit}`);
      v[name] = exact;
    }
    return new Bench(v.run, Number(v.producer), v.seq, v.key, v.intended_ns, v.sent_ns);
  }

  // The integer members of the payload's `"bench":{...}` object, as digits.
  static rawIntegers(text) {
    const found = new Map();
    const m = /"bench"\s*:\s*\{([^{}]*)\}/.exec(text);
    if (m) {
      for (const f of m[1].matchAll(/"([a-z_]+)"\s*:\s*(\d+)\s*(?=[,}]|$)/g)) found.set(f[1], f[2]);
    }
    return found;
  }
}

function text(obj, name) {
  const v = obj[name];
  if (typeof v !== 'string') throw new DecodeError(`${name} is not a string: ${JSON.stringify(v)}`);
  return v;
}

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

// `events.order.created`, v1 or v2 (v2 is v1 plus `currency`, the compatible
// addition). Fields it does not know (a later addition's, the padding, v1's
// `currency`) are ignored; another version, or a required field missing,
// null or of the wrong type, is refused.
class OrderCreated {
  static VERSIONS = ['v1', 'v2'];

  constructor(version, orderId, userId, total, currency, timestamp, traceId, bench) {
    this.version = version;
    this.orderId = orderId;
    this.userId = userId;
    this.total = total;
    this.currency = currency; // v2's, when it says; else null
    this.timestamp = timestamp;
    this.traceId = traceId;
    this.bench = bench;
    Object.freeze(this);
  }

  static fromJSON(obj, payloadText) {
    if (!isObject(obj)) throw new DecodeError('the event is not an object');
    const version = text(obj, 'version');
    if (!OrderCreated.VERSIONS.includes(version)) {
      throw new DecodeError(`version ${JSON.stringify(version)}, not ${OrderCreated.VERSIONS.join(' or ')}`);
    }
    const total = obj.total;
    if (typeof total !== 'number' || !Number.isFinite(total)) {
      throw new DecodeError(`total is not a number: ${JSON.stringify(total)}`);
    }
    // An optional string: an addition is absent from a producer not yet
    // deployed, never of another type.
    let currency = null;
    if (version === 'v2' && obj.currency != null) currency = text(obj, 'currency');
    return new OrderCreated(version, text(obj, 'order_id'), text(obj, 'user_id'), total, currency,
      text(obj, 'timestamp'), text(obj, 'trace_id'), Bench.fromJSON(obj.bench, payloadText));
  }
}

// The event, or null, why (`error`) and as much of its envelope as could be
// read: `bench` (leniently, whatever else the event lacks) and `traceId`.
function decode(payload) {
  let payloadText, obj;
  try {
    payloadText = utf8.decode(payload);
    obj = JSON.parse(payloadText);
  } catch (e) {
    return { event: null, bench: null, traceId: null, error: `not JSON: ${errorText(e)}` };
  }
  try {
    const event = OrderCreated.fromJSON(obj, payloadText);
    return { event, bench: event.bench, traceId: event.traceId, error: null };
  } catch (e) {
    if (!(e instanceof DecodeError)) throw e;
    const traceId = isObject(obj) && typeof obj.trace_id === 'string' ? obj.trace_id : null;
    try {
      return { event: null, bench: isObject(obj) ? Bench.fromJSON(obj.bench, payloadText) : null, traceId, error: e.message };
    } catch (e2) {
      if (!(e2 instanceof DecodeError)) throw e2;
      return { event: null, bench: null, traceId, error: e.message };
    }
  }
}

// ----------------------------------------------------------------- failures

const u64 = (x) => BigInt.asUintN(64, x);

function mix(z) {
  z = u64(z + 0x9e3779b97f4a7c15n);
  z = u64((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
  z = u64((z ^ (z >> 27n)) * 0x94d049bb133111ebn);
  return z ^ (z >> 31n);
}

// A number in [0, 1) from the group's seed and the message's number, as
// brokerbench's `unit_hash` (src/scenario/mod.rs) computes it.
function unitHash(seed, producer, seq) {
  const z = mix(mix(u64(seed) ^ u64(BigInt(producer))) ^ u64(seq));
  return Number(z >> 11n) / 2 ** 53;
}

// FNV-1a 64 over the group's name (`Failures::seed`); the seed comes in the
// configuration, this is for the self-check.
function groupSeed(group) {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(group, 'utf8')) h = u64((h ^ BigInt(b)) * 0x100000001b3n);
  return h;
}

// A Bench as the vectors write one: u64s as decimal text, producer a number.
function benchVector(bench) {
  if (bench === null) return null;
  return {
    run: String(bench.run),
    producer: bench.producer,
    seq: String(bench.seq),
    key: String(bench.key),
    intended_ns: String(bench.intendedNs),
    sent_ns: String(bench.sentNs),
  };
}

// The fates hash as brokerbench's do: ../fate-vectors.json, which
// brokerbench's own unit test checks too; and the decoder takes and refuses
// what brokerbench's does: ../event-vectors.json. Answers how many events.
function selfCheck() {
  const vectors = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'fate-vectors.json'), 'utf8'));
  for (const s of vectors.seeds) {
    const got = groupSeed(s.group);
    if (got !== BigInt(s.seed)) throw new Error(`seed of ${JSON.stringify(s.group)}: ${got}, want ${s.seed}`);
  }
  if (vectors.unit_hash.length < 5) throw new Error('too few unit_hash vectors');
  for (const v of vectors.unit_hash) {
    const got = unitHash(BigInt(v.seed), v.producer, BigInt(v.seq));
    if (got !== v.u) throw new Error(`unit_hash(${v.seed}, ${v.producer}, ${v.seq}) = ${got}, want ${v.u}`);
  }

  const file = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'event-vectors.json'), 'utf8'));
  const events = Array.isArray(file) ? file : file.vectors;
  if (!Array.isArray(events) || events.length < 5) throw new Error('too few event vectors');
  if (!events.some((v) => v.decodes) || !events.some((v) => !v.decodes)) {
    throw new Error('the event vectors should have events to take and to refuse');
  }
  for (const [i, v] of events.entries()) {
    const name = JSON.stringify(v.name === undefined ? `event vector ${i}` : v.name);
    const { event, bench, error } = decode(Buffer.from(v.payload, 'utf8'));
    if ((event !== null) !== v.decodes) {
      throw new Error(`${name}: ${event !== null ? 'taken' : `refused (${error})`}, want ${v.decodes ? 'taken' : 'refused'}`);
    }
    // What a refused event's receipt carries; a decoded event's envelope too.
    if (event === null || v.bench != null) {
      const got = JSON.stringify(benchVector(bench));
      const want = JSON.stringify(v.bench == null ? null : benchVector({
        run: v.bench.run,
        producer: v.bench.producer,
        seq: v.bench.seq,
        key: v.bench.key,
        intendedNs: v.bench.intended_ns,
        sentNs: v.bench.sent_ns,
      }));
      if (got !== want) throw new Error(`${name}: read the envelope ${got}, want ${want}`);
    }
  }
  return events.length;
}

class Failures {
  constructor(seed, poison, transient, transientAttempts) {
    this.seed = seed;
    this.poison = poison;
    this.transient = transient;
    this.transientAttempts = transientAttempts;
  }

  // Whether attempt `failed + 1` of message (producer, seq) fails.
  fails(producer, seq, failed) {
    const u = unitHash(this.seed, producer, seq);
    if (u < this.poison) return true;
    if (u < this.poison + this.transient) return failed < this.transientAttempts;
    return false;
  }
}

// --------------------------------------------------------------- the agent

class Fatal extends Error {}
class Stopped extends Error {}

// 1 s, 2 s, 4 s ... capped, less up to 20 % of jitter (brokerbench's own).
function backoffMs(attempt, capMs) {
  return Math.min(1000 * 2 ** Math.min(attempt, 20), capMs) * (1 - 0.2 * Math.random());
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function timed(what, promise, ms = CALL_TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function deferred() {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  return { promise, resolve };
}

// Parses a u64 given as decimal text (or, from an older brokerbench, as a
// JSON number: then its digits are read from the configuration's text).
function u64Setting(value, name, configText) {
  if (typeof value === 'string' && /^\d+$/.test(value)) return BigInt(value);
  if (typeof value === 'number') {
    const m = new RegExp(`"${name}"\\s*:\\s*(\\d+)`).exec(configText);
    if (m && Number(BigInt(m[1])) === value) return BigInt(m[1]);
  }
  throw new Error(`${name} is not an unsigned integer: ${JSON.stringify(value)}`);
}

// At most `size` deliveries handled at once; acquire() waits for a slot and
// answers false once the pool is closed.
class Pool {
  constructor(size) {
    this.size = size;
    this.active = 0;
    this.waiters = [];
    this.closed = false;
    this.idleWaiters = [];
  }

  acquire() {
    if (this.closed) return Promise.resolve(false);
    if (this.active < this.size) {
      this.active += 1;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release() {
    const next = this.waiters.shift();
    if (next && !this.closed) {
      next(true); // the slot passes on
      return;
    }
    this.active -= 1;
    if (this.active === 0) {
      for (const r of this.idleWaiters.splice(0)) r();
    }
  }

  // No more work: whoever waits for a slot is told so.
  close() {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w(false);
  }

  // Whether everything running finished within `ms`.
  async idle(ms) {
    if (this.active === 0) return true;
    const done = new Promise((r) => this.idleWaiters.push(r)).then(() => true);
    return Promise.race([done, sleep(ms).then(() => this.active === 0)]);
  }
}

class Agent {
  constructor(config, configText) {
    this.broker = config.broker;
    this.url = config.url;
    this.group = config.group;
    this.run = u64Setting(config.run, 'run', configText);
    this.epochNs = BigInt(config.epoch_ns);
    this.concurrency = Math.max(1, Number(config.concurrency) || 1);
    this.processingMs = Number(config.processing_ns || 0) / 1e6;
    this.backoffMaxMs = Math.max(1000, Number(config.backoff_max_ms) || 30_000);
    const f = config.failures;
    this.failures = f == null ? null
      : new Failures(u64Setting(f.seed, 'seed', configText), Number(f.poison), Number(f.transient),
        Number(f.transient_attempts));
    this.source = config.source || {};
    // Idempotency on the order id, and failed attempts per order id.
    this.processed = new Set();
    this.failed = new Map();
    this.pool = new Pool(this.concurrency);
    this.stopping = false;
    this.stopSignal = deferred();
    this.isReady = false;
    this.receipts = new Receipts(process.stdout, () => this.stop());
  }

  stop() {
    if (this.stopping) return;
    this.stopping = true;
    this.pool.close();
    this.stopSignal.resolve();
  }

  // Sleeps; throws Stopped if told to stop meanwhile.
  async sleepOrStop(ms) {
    let timer;
    const slept = await Promise.race([
      new Promise((r) => { timer = setTimeout(() => r(true), ms); }),
      this.stopSignal.promise.then(() => false),
    ]);
    clearTimeout(timer);
    if (!slept) throw new Stopped();
  }

  // `promise`'s result, or Stopped if told to stop first.
  async untilStopped(promise) {
    const stopped = Symbol('stopped');
    const r = await Promise.race([promise, this.stopSignal.promise.then(() => stopped)]);
    if (r === stopped) {
      promise.catch(() => {});
      throw new Stopped();
    }
    return r;
  }

  now() {
    const ns = process.hrtime.bigint() - this.epochNs;
    return ns > 0n ? ns : 0n;
  }

  ready() {
    if (this.isReady) return;
    this.isReady = true;
    this.receipts.ready();
  }

  async process() {
    if (this.processingMs > 0) await sleep(this.processingMs);
  }

  // Skip, fail on purpose (with the attempt) or process; recorded at once,
  // so that a concurrent duplicate sees it.
  decide(event) {
    const orderId = event.orderId;
    if (this.processed.has(orderId)) return [SKIPPED, 0];
    if (this.failures !== null) {
      const failed = this.failed.get(orderId) || 0;
      if (this.failures.fails(event.bench.producer, event.bench.seq, failed)) {
        this.failed.set(orderId, failed + 1);
        return [FAILED, failed + 1];
      }
      this.failed.delete(orderId);
    }
    this.processed.add(orderId);
    return [PROCESSED, 0];
  }

  // One delivery: decode, decide, process or fail, settle, receipt.
  // `d` has payload, redelivered, ack(), fail(attempt, event) (which hands
  // the message back and says what was done) and refuse(error, traceId)
  // (which gives up a message that cannot be decoded, never to be retried).
  async handle(d, received) {
    const decoded = decode(d.payload);
    const { event, error, traceId } = decoded;
    let { bench } = decoded;
    let kind, action = PROCESSED, attempt = 0;
    if (event === null && bench !== null && bench.run === this.run) {
      // This run's, but its typed decoder refuses it: given up at once, not
      // processed, never retried; the receipt carries its envelope.
      kind = DECODE_FAILED;
      action = REFUSED;
      await d.refuse(error, traceId);
    } else if (event === null) {
      // Not this run's, as far as anyone can tell: acknowledged, no envelope.
      kind = DECODE_FAILED;
      bench = null;
      await d.ack();
    } else if (event.bench.run !== this.run) {
      kind = FOREIGN;
      await d.ack();
    } else {
      kind = DELIVERY;
      [action, attempt] = this.decide(event);
      if (action !== SKIPPED) await this.process();
      if (action === FAILED) {
        action = await d.fail(attempt, event);
      } else {
        await d.ack();
      }
    }
    this.receipts.delivery(kind, d.redelivered, action, attempt, bench, received);
    return { kind, action, attempt };
  }

  // Runs handle() in a pool slot already acquired.
  dispatch(d, received) {
    this.handle(d, received)
      .catch((e) => log('ERROR', `handling a delivery: ${e && e.stack ? e.stack : e}`))
      .finally(() => this.pool.release());
  }

  // After SIGTERM: what is being processed may finish (and be settled).
  async finishWork() {
    this.pool.close();
    if (!(await this.pool.idle(STOP_GRACE_MS))) {
      warn(`${this.pool.active} deliveries still in progress at stop`);
    }
  }

  // ---------------------------------------------------------- RabbitMQ

  async rabbitmq() {
    const amqp = require('amqplib');
    const src = this.source;
    const queue = src.queue;
    const prefetch = Number(src.prefetch) || this.concurrency;
    const requeueFailed = Boolean(src.requeue_failed);
    const maxDeliveries = Number(src.max_deliveries) || 5;
    const retryDelayMs = Number(src.retry_delay_ms) || 0;
    const url = new URL(this.url);
    if (!url.searchParams.has('heartbeat')) url.searchParams.set('heartbeat', '10');
    const agent = this;

    class Delivery {
      constructor(channel, msg) {
        this.channel = channel;
        this.msg = msg;
        this.payload = msg.content;
        this.redelivered = Boolean(msg.fields.redelivered);
      }

      async ack() {
        try {
          this.channel.ack(this.msg);
        } catch (e) {
          warn(`ack: ${errorText(e)}`);
        }
      }

      async fail(attempt) {
        // RabbitMQ cannot delay a redelivery: the consumer waits. A quorum
        // queue counts deliveries and dead-letters at its limit; a classic
        // queue dead-letters what is rejected without requeueing, at our count.
        await sleep(retryDelayMs);
        try {
          this.channel.reject(this.msg, requeueFailed || attempt < maxDeliveries);
        } catch (e) {
          warn(`reject: ${errorText(e)}`);
        }
        return FAILED;
      }

      async refuse() {
        // basic.reject without requeueing: the queue dead-letters it when
        // the group has a dead-letter exchange, else drops it.
        try {
          this.channel.reject(this.msg, false);
        } catch (e) {
          warn(`reject: ${errorText(e)}`);
        }
      }
    }

    // The channel first: its acks go out before its close (amqplib writes
    // each channel's frames in order, but not across channels), then the
    // connection.
    const close = async (connection, channel = null) => {
      if (connection === null) return;
      for (const [what, it] of [['the channel', channel], ['the connection', connection]]) {
        if (it === null) continue;
        try {
          await timed(`closing ${what}`, it.close(), CLOSE_TIMEOUT_MS);
        } catch (e) {
          if (!/closed/i.test(errorText(e))) warn(`closing ${what}: ${errorText(e)}`);
        }
      }
    };

    // One connection and channel, consuming; throws if that failed.
    const subscribe = async (lost) => {
      let connection = null;
      try {
        connection = await timed('connecting to RabbitMQ', amqp.connect(url.toString(), {
          timeout: CALL_TIMEOUT_MS,
          clientProperties: { connection_name: `brokerbench-agent-node-${this.group}` },
        }));
        connection.on('error', (e) => warn(`RabbitMQ connection: ${errorText(e)}`));
        connection.on('close', () => lost.resolve('connection closed'));
        const channel = await timed('opening a channel', connection.createChannel());
        channel.on('error', (e) => warn(`RabbitMQ channel: ${errorText(e)}`));
        channel.on('close', () => lost.resolve('channel closed'));
        try {
          await timed('looking up the queue', channel.checkQueue(queue));
        } catch (e) {
          if (e && e.code === 404) throw new Fatal(`queue ${queue} does not exist: ${errorText(e)}`);
          throw e;
        }
        await timed('basic.qos', channel.prefetch(prefetch));
        await timed('basic.consume', channel.consume(queue, (msg) => {
          if (msg === null) {
            lost.resolve('the consumer was cancelled');
            return;
          }
          const received = agent.now();
          if (agent.stopping) return; // never started: back to the queue at close
          const d = new Delivery(channel, msg);
          agent.pool.acquire().then((slot) => {
            if (slot) agent.dispatch(d, received);
          });
        }, { noAck: false }));
        return { connection, channel };
      } catch (e) {
        await close(connection);
        throw e;
      }
    };

    let attempt = 0;
    for (;;) {
      const lost = deferred();
      let connection, channel;
      try {
        ({ connection, channel } = await this.untilStopped(subscribe(lost)));
      } catch (e) {
        if (e instanceof Fatal || e instanceof Stopped) throw e;
        warn(`RabbitMQ: ${errorText(e)}; again in a while`);
        await this.sleepOrStop(backoffMs(attempt, this.backoffMaxMs));
        attempt += 1;
        continue;
      }
      this.ready();
      const why = await Promise.race([lost.promise, this.stopSignal.promise.then(() => null)]);
      if (why === null) {
        // What no one started goes back to the queue when the channel
        // closes; what is being processed is settled first.
        await this.finishWork();
        await this.receipts.drain();
        await close(connection, channel);
        return;
      }
      // Lost: what was delivered but not acknowledged comes back, flagged
      // redelivered, on the next channel.
      warn(`RabbitMQ: ${why}; reconnecting`);
      await close(connection);
      await this.sleepOrStop(backoffMs(0, this.backoffMaxMs));
      attempt = 1;
    }
  }

  // --------------------------------------------------------- JetStream

  async jetstream() {
    const { connect } = require('@nats-io/transport-node');
    const { jetstream } = require('@nats-io/jetstream');
    const src = this.source;
    const stream = src.stream, durable = src.durable;
    const nakDelayMs = Number(src.nak_delay_ms) || 0;
    const terminateAt = src.terminate_at == null ? null : Number(src.terminate_at);

    class Delivery {
      constructor(msg) {
        this.msg = msg;
        this.payload = msg.data;
        let delivered = 1;
        try {
          delivered = msg.info.deliveryCount;
        } catch {
          // not a JetStream reply subject: first delivery
        }
        this.delivered = delivered;
        this.redelivered = delivered > 1;
      }

      async ack() {
        // As brokerbench's own consumer: no confirmation awaited (an ack
        // lost is a redelivery, which the ledger counts).
        try {
          this.msg.ack();
        } catch (e) {
          warn(`ack: ${errorText(e)}`);
        }
      }

      async fail() {
        // NAK with the retry delay (the server counts deliveries and stops at
        // max_deliver), or TERM at the last delivery (its advisory is the
        // dead letter).
        try {
          if (terminateAt !== null && this.delivered >= terminateAt) {
            this.msg.term();
          } else {
            this.msg.nak(nakDelayMs > 0 ? nakDelayMs : undefined);
          }
        } catch (e) {
          warn(`nak/term: ${errorText(e)}`);
        }
        return FAILED;
      }

      async refuse() {
        // +TERM: never redelivered (its advisory is the dead letter).
        try {
          this.msg.term('cannot decode the event');
        } catch (e) {
          warn(`term: ${errorText(e)}`);
        }
      }
    }

    // nats.js asks for the delay before every pass of its reconnection loop;
    // the server's count of failed attempts says which one this is.
    let nc = null;
    const delays = new Map();
    const reconnectDelay = () => {
      let failed = 0;
      try {
        failed = nc.protocol.servers.getCurrentServer().reconnects;
      } catch {
        // unknown: the first
      }
      if (!delays.has(failed)) delays.set(failed, backoffMs(Math.max(failed - 1, 0), this.backoffMaxMs));
      return delays.get(failed);
    };

    // The first connection: nats.js gives up at once, so our backoff
    // between tries. Once connected, it reconnects for ever.
    let attempt = 0;
    for (;;) {
      try {
        nc = await this.untilStopped(timed('connecting to NATS', connect({
          servers: this.url,
          name: `brokerbench-agent-node-${this.group}`,
          timeout: CALL_TIMEOUT_MS,
          reconnect: true,
          maxReconnectAttempts: -1,
          reconnectDelayHandler: reconnectDelay,
          pingInterval: 10_000,
          maxPingOut: 2,
        }), CALL_TIMEOUT_MS + 1000));
        break;
      } catch (e) {
        if (e instanceof Stopped) throw e;
        warn(`NATS: ${errorText(e)}; again in a while`);
        await this.sleepOrStop(backoffMs(attempt, this.backoffMaxMs));
        attempt += 1;
      }
    }
    (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect' && !this.stopping) warn('NATS: disconnected; reconnecting');
        else if (s.type === 'reconnect') {
          delays.clear();
          warn('NATS: reconnected');
        } else if (s.type === 'error') warn(`NATS: ${errorText(s.error)}`);
      }
    })().catch(() => {});

    let messages = null;
    try {
      const js = jetstream(nc, { timeout: CALL_TIMEOUT_MS });
      // The durable consumer is brokerbench's: bound to, never made or changed.
      attempt = 0;
      let consumer;
      for (;;) {
        try {
          consumer = await this.untilStopped(js.consumers.get(stream, durable));
          break;
        } catch (e) {
          if (e instanceof Stopped) throw e;
          if (/not found/i.test(errorText(e))) {
            throw new Fatal(`durable consumer ${durable} of stream ${stream}: ${errorText(e)}`);
          }
          warn(`JetStream: ${errorText(e)}; again in a while`);
          await this.sleepOrStop(backoffMs(attempt, this.backoffMaxMs));
          attempt += 1;
        }
      }
      messages = await this.untilStopped(consumer.consume({
        max_messages: Math.max(this.concurrency * 2, 64),
      }));
      (async () => {
        for await (const s of messages.status()) {
          if (s.type === 'heartbeats_missed' || s.type === 'consumer_not_found'
            || s.type === 'stream_not_found' || s.type === 'consumer_deleted') {
            warn(`JetStream consumer: ${s.type}`);
          }
        }
      })().catch(() => {});
      // Told to stop: the iterator ends after what it holds, which is handed
      // back at once (NAK) rather than after the ack wait.
      this.stopSignal.promise.then(() => messages.stop());
      this.ready();
      for await (const msg of messages) {
        const received = this.now();
        if (this.stopping || !(await this.pool.acquire())) {
          try { msg.nak(); } catch { /* closing */ }
          continue;
        }
        this.dispatch(new Delivery(msg), received);
      }
      if (!this.stopping) throw new Fatal('the JetStream consumer stopped');
      await this.finishWork();
      await this.receipts.drain();
    } finally {
      if (messages !== null) messages.stop();
      try {
        await timed('flushing', nc.flush(), CLOSE_TIMEOUT_MS);
      } catch (e) {
        warn(`flushing: ${errorText(e)}`);
      }
      try {
        await timed('closing the connection', nc.close(), CLOSE_TIMEOUT_MS);
      } catch (e) {
        warn(`closing: ${errorText(e)}`);
      }
    }
  }

  // ------------------------------------------------------------- Kafka

  async kafka() {
    const { Kafka, logLevel } = require('kafkajs');
    const src = this.source;
    const topic = src.topic, groupId = src.group_id;
    const deadLetterTopic = src.dead_letter_topic;
    const maxDeliveries = Number(src.max_deliveries) || 5;
    const retryDelayMs = Number(src.retry_delay_ms) || 0;
    const fetchWaitMaxMs = src.fetch_wait_max_ms == null ? 100 : Math.max(1, Number(src.fetch_wait_max_ms));
    const partitions = Number(src.partitions) || 1;
    const brokers = this.url.split(',').map((b) => b.trim().replace(/^[a-z]+:\/\//i, ''));

    const levels = { [logLevel.ERROR]: 'ERROR', [logLevel.WARN]: 'WARNING', [logLevel.INFO]: 'INFO', [logLevel.DEBUG]: 'DEBUG' };
    const logCreator = () => ({ namespace, level, log: entry }) => {
      // Stopping in the middle of an in-process retry: the consumer is told
      // by an error (so that the offset is not committed), which it reports.
      if (this.stopping && /eachMessage|Crash|Restarting|stopping/.test(entry.message || '')) return;
      const extra = entry.error ? `: ${entry.error}` : '';
      log(levels[level] || 'INFO', `kafkajs ${namespace}: ${entry.message}${extra}`);
    };
    const kafka = new Kafka({
      clientId: `brokerbench-agent-node-${this.group}`,
      brokers,
      connectionTimeout: CALL_TIMEOUT_MS,
      requestTimeout: CALL_TIMEOUT_MS + fetchWaitMaxMs,
      // kafkajs's own exponential backoff, with jitter: 1 s, 2 s, 4 s ...
      retry: { initialRetryTime: 1000, maxRetryTime: this.backoffMaxMs, multiplier: 2, factor: 0.2, retries: 8 },
      logLevel: logLevel.WARN,
      logCreator,
    });
    const consumer = kafka.consumer({
      groupId,
      sessionTimeout: 10_000,
      heartbeatInterval: 3_000,
      maxWaitTimeInMs: fetchWaitMaxMs,
      minBytes: 1,
    });
    let producer = null;
    if (this.failures !== null) {
      if (!deadLetterTopic) throw new Fatal('a group with failures needs source.dead_letter_topic');
      producer = kafka.producer({ allowAutoTopicCreation: false });
    }

    // Produces the message to the dead-letter topic with where it came from
    // (Spring Kafka's kafka_dlt-* headers) and why, and waits for the broker.
    const deadLetter = async (partition, message, why, traceId) => {
      const p = Buffer.alloc(4);
      p.writeInt32BE(partition);
      const o = Buffer.alloc(8);
      o.writeBigInt64BE(BigInt(message.offset));
      const headers = {
        'kafka_dlt-original-topic': Buffer.from(topic),
        'kafka_dlt-original-partition': p,
        'kafka_dlt-original-offset': o,
        'kafka_dlt-original-consumer-group': Buffer.from(groupId),
        'kafka_dlt-exception-message': Buffer.from(why),
      };
      if (traceId) headers.trace_id = Buffer.from(traceId);
      try {
        await timed('the dead letter', producer.send({
          topic: deadLetterTopic,
          acks: -1,
          timeout: CALL_TIMEOUT_MS,
          messages: [{ key: message.key, value: message.value, headers }],
        }), CONFIRM_TIMEOUT_MS);
        return true;
      } catch (e) {
        warn(`dead letter: ${errorText(e)}`);
        return false;
      }
    };

    // A message until it is processed, skipped, dead-lettered or refused,
    // each attempt with a receipt of its own; kafkajs commits its offset once
    // this returns. Told to stop meanwhile, it throws: not committed, the
    // group reads it again.
    const eachMessage = async ({ partition, message, heartbeat }) => {
      // Waits `ms` (throws if told to stop meanwhile), then tells the group
      // coordinator this member is alive: a retry must not cost the partition.
      const pause = async (ms) => {
        try {
          await this.sleepOrStop(ms);
        } catch (e) {
          throw new Stopped('stopping');
        }
        try {
          await heartbeat();
        } catch (e) {
          warn(`heartbeat: ${errorText(e)}`);
        }
      };
      for (;;) {
        if (this.stopping) throw new Stopped('stopping');
        const received = this.now();
        let again = false;
        const d = {
          payload: message.value || Buffer.alloc(0),
          redelivered: false, // Kafka has no such flag
          ack: async () => {},
          fail: async (attempt, event) => {
            if (attempt >= maxDeliveries
              && await deadLetter(partition, message, `processing failed ${attempt} times`, event.traceId)) {
              return DEAD_LETTERED;
            }
            again = true;
            return FAILED;
          },
          // Never retried: to the dead-letter topic when the group has one
          // (tried again, the offset held back, until the broker takes it),
          // then committed; without one, committed.
          refuse: async (error, traceId) => {
            if (producer === null) return;
            for (let tries = 0; ; tries += 1) {
              if (await deadLetter(partition, message, `cannot decode the event: ${error}`, traceId)) return;
              await pause(backoffMs(tries, this.backoffMaxMs));
            }
          },
        };
        await this.handle(d, received);
        if (!again) return;
        // Delivered again in process after the delay, its offset held back.
        await pause(retryDelayMs);
      }
    };

    const joined = deferred();
    const crashed = deferred();
    consumer.on(consumer.events.GROUP_JOIN, () => joined.resolve());
    consumer.on(consumer.events.CRASH, (e) => {
      if (!e.payload.restart && !this.stopping) crashed.resolve(e.payload.error);
    });

    try {
      await this.untilStopped(timed('connecting the consumer', consumer.connect(), CONFIRM_TIMEOUT_MS));
      if (producer !== null) {
        await this.untilStopped(timed('connecting the producer', producer.connect(), CONFIRM_TIMEOUT_MS));
      }
      await this.untilStopped(timed('subscribing', consumer.subscribe({ topics: [topic], fromBeginning: true })));
      await consumer.run({
        autoCommit: true,
        autoCommitInterval: 1000,
        partitionsConsumedConcurrently: Math.max(1, Math.min(this.concurrency, partitions)),
        eachMessage,
      });
      const joinedOrNot = await this.untilStopped(Promise.race([
        joined.promise.then(() => true),
        crashed.promise.then((e) => { throw new Fatal(`Kafka: ${errorText(e)}`); }),
        sleep(60_000).then(() => false),
      ]));
      if (!joinedOrNot) throw new Fatal(`consumer group ${groupId} did not join within 60 s`);
      this.ready();
      const error = await this.untilStopped(crashed.promise).catch((e) => {
        if (e instanceof Stopped) return null;
        throw e;
      });
      if (error !== null) throw new Fatal(`Kafka: ${errorText(error)}`);
    } catch (e) {
      if (!(e instanceof Stopped)) throw e;
    } finally {
      // Stopping waits for what is being processed, commits what is done and
      // leaves the group.
      try {
        await timed('closing the consumer', consumer.disconnect(), EXIT_DEADLINE_MS - 1500);
      } catch (e) {
        warn(`closing the consumer: ${errorText(e)}`);
      }
      await this.receipts.drain();
      if (producer !== null) {
        try {
          await timed('closing the producer', producer.disconnect(), 1000);
        } catch (e) {
          warn(`closing the producer: ${errorText(e)}`);
        }
      }
    }
  }

  async runSession() {
    const session = { rabbitmq: this.rabbitmq, jetstream: this.jetstream, kafka: this.kafka }[this.broker];
    if (!session) throw new Fatal(`unknown broker ${JSON.stringify(this.broker)}`);
    try {
      await session.call(this);
    } catch (e) {
      if (!(e instanceof Stopped)) throw e;
      await this.finishWork();
    }
  }
}

// --------------------------------------------------------------------- main

async function exit(agent, code) {
  if (agent) {
    try {
      await timed('writing receipts', agent.receipts.drain(), 1000);
    } catch (e) {
      warn(errorText(e));
    }
  }
  process.exit(code);
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length === 1 && args[0] === '--self-check') {
    const events = selfCheck();
    process.stderr.write(`unit_hash, the group seed and the decoder (${events} events) match brokerbench's vectors\n`);
    return;
  }
  const config = process.env.BROKERBENCH_AGENT_CONFIG;
  if (args.length !== 0 || config === undefined) {
    process.stderr.write('usage: BROKERBENCH_AGENT_CONFIG=\'<configuration JSON>\' node agent.js | node agent.js --self-check\n');
    process.exit(2);
  }
  delete process.env.BROKERBENCH_AGENT_CONFIG;
  let agent;
  try {
    agent = new Agent(JSON.parse(config), config);
    selfCheck();
  } catch (e) {
    log('ERROR', `bad configuration: ${errorText(e)}`);
    process.exit(2);
  }
  const onSignal = () => {
    if (agent.stopping) return;
    agent.stop();
    // brokerbench kills after 5 s: whatever still hangs is left behind.
    setTimeout(() => {
      warn('not closed in time; exiting');
      exit(agent, 0);
    }, EXIT_DEADLINE_MS);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('unhandledRejection', (e) => {
    log('ERROR', `unhandled: ${e && e.stack ? e.stack : e}`);
    if (!agent.stopping) exit(agent, 1);
  });
  try {
    await agent.runSession();
  } catch (e) {
    log('ERROR', `group ${agent.group}: ${e instanceof Fatal ? e.message : (e && e.stack) || e}`);
    await exit(agent, 1);
  }
  if (!agent.stopping) {
    log('ERROR', `group ${agent.group}: the ${agent.broker} session ended by itself`);
    await exit(agent, 1);
  }
  await exit(agent, 0);
}

if (require.main === module) {
  main();
} else {
  module.exports = { decode, unitHash, groupSeed, selfCheck, Bench, OrderCreated, Receipts };
}
