// brokerbench-agent consumes one consumer group from one broker with Go's
// usual client libraries and writes a 48-byte receipt per delivery to stdout
// (docs/cross-language.md). Configuration: one JSON argument.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Config is the agent's configuration, as brokerbench writes it.
type Config struct {
	Broker       string          `json:"broker"`
	URL          string          `json:"url"`
	Group        string          `json:"group"`
	Run          uint64          `json:"run,string"`
	EpochNs      uint64          `json:"epoch_ns"`
	Concurrency  int             `json:"concurrency"`
	ProcessingNs int64           `json:"processing_ns"`
	BackoffMaxMs int64           `json:"backoff_max_ms"`
	Failures     *Failures       `json:"failures"`
	Source       json.RawMessage `json:"source"`
}

// Failures says which messages the group fails on purpose.
type Failures struct {
	Seed              uint64  `json:"seed,string"`
	Poison            float64 `json:"poison"`
	Transient         float64 `json:"transient"`
	TransientAttempts uint32  `json:"transient_attempts"`
}

// Bench is brokerbench's envelope inside the event.
type Bench struct {
	Run        uint64 `json:"run"`
	Producer   uint32 `json:"producer"`
	Seq        uint64 `json:"seq"`
	Key        uint64 `json:"key"`
	IntendedNs uint64 `json:"intended_ns"`
	SentNs     uint64 `json:"sent_ns"`
}

// OrderCreated is the versioned event events.order.created: v1, or v2,
// which is v1 plus the currency. Fields neither version has are ignored; a
// wrong type or a required field missing or null is refused.
type OrderCreated struct {
	Version   string
	OrderID   string
	UserID    string
	Total     float64
	Currency  string // v2's addition; empty when absent.
	Timestamp string
	TraceID   string
	Bench     *Bench
}

// orderCreatedJSON is the event as encoding/json reads it. A missing field
// and a null one both leave its pointer nil, which encoding/json does not
// refuse by itself; a wrong type is an error of its own. The currency is
// kept raw, as v1 does not know it.
type orderCreatedJSON struct {
	Version   *string         `json:"version"`
	OrderID   *string         `json:"order_id"`
	UserID    *string         `json:"user_id"`
	Total     *float64        `json:"total"`
	Currency  json.RawMessage `json:"currency"`
	Timestamp *string         `json:"timestamp"`
	TraceID   *string         `json:"trace_id"`
	Bench     *benchJSON      `json:"bench"`
}

// benchJSON is the envelope as encoding/json reads it: unsigned integers,
// the producer below 2^32, each of them required.
type benchJSON struct {
	Run        *uint64 `json:"run"`
	Producer   *uint32 `json:"producer"`
	Seq        *uint64 `json:"seq"`
	Key        *uint64 `json:"key"`
	IntendedNs *uint64 `json:"intended_ns"`
	SentNs     *uint64 `json:"sent_ns"`
}

// Decode reads the event into its typed form.
func Decode(payload []byte) (*OrderCreated, error) {
	var w orderCreatedJSON
	if err := json.Unmarshal(payload, &w); err != nil {
		return nil, err
	}
	return w.event()
}

// event checks what encoding/json could not and gives the typed event.
func (w *orderCreatedJSON) event() (*OrderCreated, error) {
	if w.Version == nil || (*w.Version != "v1" && *w.Version != "v2") {
		return nil, errors.New("not version v1 or v2")
	}
	if w.OrderID == nil || w.UserID == nil || w.Total == nil || w.Timestamp == nil || w.TraceID == nil {
		return nil, errors.New("a required field is missing or null")
	}
	bench, err := w.Bench.bench()
	if err != nil {
		return nil, err
	}
	currency, err := w.currency()
	if err != nil {
		return nil, err
	}
	return &OrderCreated{
		Version:   *w.Version,
		OrderID:   *w.OrderID,
		UserID:    *w.UserID,
		Total:     *w.Total,
		Currency:  currency,
		Timestamp: *w.Timestamp,
		TraceID:   *w.TraceID,
		Bench:     bench,
	}, nil
}

// currency is v2's optional text field; to v1 it is an unknown field, ignored.
func (w *orderCreatedJSON) currency() (string, error) {
	if *w.Version != "v2" || w.Currency == nil {
		return "", nil
	}
	var currency *string
	if err := json.Unmarshal(w.Currency, &currency); err != nil || currency == nil {
		return "", err
	}
	return *currency, nil
}

// bench gives the envelope once every one of its fields is there.
func (b *benchJSON) bench() (*Bench, error) {
	if b == nil || b.Run == nil || b.Producer == nil || b.Seq == nil || b.Key == nil || b.IntendedNs == nil || b.SentNs == nil {
		return nil, errors.New("the envelope is missing or incomplete")
	}
	return &Bench{
		Run:        *b.Run,
		Producer:   *b.Producer,
		Seq:        *b.Seq,
		Key:        *b.Key,
		IntendedNs: *b.IntendedNs,
		SentNs:     *b.SentNs,
	}, nil
}

// ReadBench reads only the envelope of an event that could not be decoded:
// whatever the rest holds, the payload must be JSON and its bench complete.
func ReadBench(payload []byte) (*Bench, error) {
	var lenient struct {
		Bench json.RawMessage `json:"bench"`
	}
	if err := json.Unmarshal(payload, &lenient); err != nil {
		return nil, err
	}
	var b *benchJSON
	if lenient.Bench != nil {
		if err := json.Unmarshal(lenient.Bench, &b); err != nil {
			return nil, err
		}
	}
	return b.bench()
}

// What a receipt says (docs/cross-language.md).
const (
	kindReady        = 1
	kindDelivery     = 2
	kindForeign      = 3
	kindDecodeFailed = 4

	actionProcessed    = 0
	actionSkipped      = 1
	actionFailed       = 2
	actionDeadLettered = 3
	actionRefused      = 4

	flagRedelivered = 1 << 0
	flagEnvelope    = 1 << 1
)

// Clock gives instants in ns since the run's epoch on CLOCK_MONOTONIC.
// unix.ClockGettime is a system call (0.7 µs here); it is read once, beside
// time.Now, whose monotonic reading is the same clock through the vDSO.
type Clock struct {
	base  uint64
	start time.Time
	epoch uint64
}

func NewClock(epoch uint64) Clock {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		fatal("reading CLOCK_MONOTONIC: %v", err)
	}
	return Clock{base: uint64(ts.Nano()), start: time.Now(), epoch: epoch}
}

func (c Clock) Now() uint64 {
	return c.base + uint64(time.Since(c.start)) - c.epoch
}

// Receipts writes receipts to stdout from one goroutine, flushed whenever
// none is waiting.
type Receipts struct {
	ch   chan [48]byte
	done chan struct{}
}

func NewReceipts() *Receipts {
	r := &Receipts{ch: make(chan [48]byte, 4096), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		out := os.Stdout
		buf := make([]byte, 0, 64*1024)
		for first := range r.ch {
			buf = append(buf[:0], first[:]...)
		more:
			for len(buf) < cap(buf)-48 {
				select {
				case next, ok := <-r.ch:
					if !ok {
						break more
					}
					buf = append(buf, next[:]...)
				default:
					break more
				}
			}
			if _, err := out.Write(buf); err != nil {
				fatal("writing receipts: %v", err)
			}
		}
	}()
	return r
}

func (r *Receipts) Ready() {
	var b [48]byte
	b[0] = kindReady
	r.ch <- b
}

// Delivery writes the receipt of one delivery.
func (r *Receipts) Delivery(kind, action byte, attempt uint32, redelivered bool, bench *Bench, received uint64) {
	r.ch <- receipt(kind, action, attempt, redelivered, bench, received)
}

// receipt lays out the receipt of one delivery. A decode-failed receipt
// that carries the envelope says so in flag bit 1.
func receipt(kind, action byte, attempt uint32, redelivered bool, bench *Bench, received uint64) [48]byte {
	var b [48]byte
	b[0] = kind
	if redelivered {
		b[1] |= flagRedelivered
	}
	if kind == kindDecodeFailed && bench != nil {
		b[1] |= flagEnvelope
	}
	b[2] = action
	b[3] = byte(min(attempt, 255))
	if bench != nil {
		binary.LittleEndian.PutUint32(b[4:], bench.Producer)
		binary.LittleEndian.PutUint64(b[8:], bench.Seq)
		binary.LittleEndian.PutUint64(b[16:], bench.Key)
		binary.LittleEndian.PutUint64(b[24:], bench.IntendedNs)
		binary.LittleEndian.PutUint64(b[32:], bench.SentNs)
	}
	binary.LittleEndian.PutUint64(b[40:], received)
	return b
}

func (r *Receipts) Close() {
	close(r.ch)
	<-r.done
}

// unitHash is brokerbench's hash of a message into [0, 1): SplitMix64's
// finalizer over the group's seed, the producer and the sequence number.
func unitHash(seed uint64, producer uint32, seq uint64) float64 {
	mix := func(z uint64) uint64 {
		z += 0x9e3779b97f4a7c15
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		return z ^ (z >> 31)
	}
	z := mix(mix(seed^uint64(producer)) ^ seq)
	return float64(z>>11) / float64(uint64(1)<<53)
}

// groupSeed is brokerbench's seed of a group's fates: FNV-1a over its name.
// brokerbench sends it in the configuration; the test holds the two equal.
func groupSeed(group string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(group); i++ {
		h = (h ^ uint64(group[i])) * 0x100000001b3
	}
	return h
}

// fails says whether the next attempt of message (producer, seq) fails,
// after `failed` failed attempts.
func (f *Failures) fails(producer uint32, seq uint64, failed uint32) bool {
	if f == nil {
		return false
	}
	u := unitHash(f.Seed, producer, seq)
	switch {
	case u < f.Poison:
		return true
	case u < f.Poison+f.Transient:
		return failed < f.TransientAttempts
	default:
		return false
	}
}

// Decision is what the group does with one delivery.
type Decision struct {
	Action  byte
	Attempt uint32
}

// Ledger is the agent's memory: idempotent on the order id, and counting
// each message's failed attempts.
type Ledger struct {
	mu        sync.Mutex
	processed map[string]bool
	failed    map[string]uint32
	failures  *Failures
}

func NewLedger(f *Failures) *Ledger {
	return &Ledger{processed: map[string]bool{}, failed: map[string]uint32{}, failures: f}
}

// Decide records a delivery of e and says what to do with it.
func (l *Ledger) Decide(e *OrderCreated) Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.processed[e.OrderID] {
		return Decision{Action: actionSkipped}
	}
	failed := l.failed[e.OrderID]
	if l.failures.fails(e.Bench.Producer, e.Bench.Seq, failed) {
		l.failed[e.OrderID] = failed + 1
		return Decision{Action: actionFailed, Attempt: failed + 1}
	}
	l.processed[e.OrderID] = true
	return Decision{Action: actionProcessed}
}

// Agent is what every broker's consumer shares.
type Agent struct {
	cfg      Config
	clock    Clock
	receipts *Receipts
	ledger   *Ledger
}

// Read decodes a payload received at `received`. It gives the event of a
// delivery of this run; or, for a payload that cannot be decoded but whose
// envelope names this run, that envelope, which the caller refuses (gives
// up without retry, processing or recording it) and reports with Refused;
// or neither, after writing the receipt of a foreign or unreadable
// delivery, which the caller acknowledges.
func (a *Agent) Read(payload []byte, redelivered bool, received uint64) (*OrderCreated, *Bench) {
	e, err := Decode(payload)
	if err != nil {
		if bench, err := ReadBench(payload); err == nil && bench.Run == a.cfg.Run {
			return nil, bench
		}
		a.receipts.Delivery(kindDecodeFailed, actionProcessed, 0, redelivered, nil, received)
		return nil, nil
	}
	if e.Bench.Run != a.cfg.Run {
		a.receipts.Delivery(kindForeign, actionProcessed, 0, redelivered, nil, received)
		return nil, nil
	}
	return e, nil
}

// Refused writes the receipt of a delivery of this run that could not be
// decoded and was given up.
func (a *Agent) Refused(bench *Bench, redelivered bool, received uint64) {
	a.receipts.Delivery(kindDecodeFailed, actionRefused, 0, redelivered, bench, received)
}

// Process does the group's work on one message.
func (a *Agent) Process() {
	if a.cfg.ProcessingNs > 0 {
		time.Sleep(time.Duration(a.cfg.ProcessingNs))
	}
}

// Backoff is the reconnection delay after `attempt` failures: 1 s, 2 s,
// 4 s ... capped, with jitter.
func (a *Agent) Backoff(attempt int) time.Duration {
	d := time.Second << min(attempt, 20)
	if max := time.Duration(a.cfg.BackoffMaxMs) * time.Millisecond; d > max {
		d = max
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func (a *Agent) stderr() *os.File { return os.Stderr }

// CallTimeout bounds every call to the broker.
const CallTimeout = 10 * time.Second

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "brokerbench-agent: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	// The configuration comes in the environment, never in argv: a URL in
	// it may carry a password, and every user can read a command line.
	config, ok := os.LookupEnv("BROKERBENCH_AGENT_CONFIG")
	if len(os.Args) != 1 || !ok {
		fatal("usage: BROKERBENCH_AGENT_CONFIG=CONFIG_JSON brokerbench-agent")
	}
	os.Unsetenv("BROKERBENCH_AGENT_CONFIG")
	var cfg Config
	dec := json.NewDecoder(strings.NewReader(config))
	if err := dec.Decode(&cfg); err != nil {
		fatal("reading the configuration: %v", err)
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	agent := &Agent{cfg: cfg, clock: NewClock(cfg.EpochNs), receipts: NewReceipts(), ledger: NewLedger(cfg.Failures)}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch cfg.Broker {
	case "rabbitmq":
		err = consumeRabbitMQ(ctx, agent)
	case "jetstream":
		err = consumeJetStream(ctx, agent)
	case "kafka":
		err = consumeKafka(ctx, agent)
	default:
		err = fmt.Errorf("unknown broker %q", cfg.Broker)
	}
	agent.receipts.Close()
	if err != nil && ctx.Err() == nil {
		fatal("%s: %v", cfg.Broker, err)
	}
}
