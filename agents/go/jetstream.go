package main

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// consumeJetStream pulls from the group's durable consumer, which
// brokerbench made, with nats.go's JetStream API (Consumer.Messages), and
// acknowledges each message after processing.
func consumeJetStream(ctx context.Context, a *Agent) error {
	var src struct {
		Stream      string  `json:"stream"`
		Durable     string  `json:"durable"`
		NakDelayMs  int64   `json:"nak_delay_ms"`
		TerminateAt *uint64 `json:"terminate_at"`
	}
	if err := json.Unmarshal(a.cfg.Source, &src); err != nil {
		return err
	}
	// One connection; nats.go reconnects by itself, here with our backoff.
	nc, err := nats.Connect(a.cfg.URL,
		nats.Name("brokerbench-agent-go-"+a.cfg.Group),
		nats.Timeout(CallTimeout),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(func(attempts int) time.Duration { return a.Backoff(attempts - 1) }),
	)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	call, cancel := context.WithTimeout(ctx, CallTimeout)
	consumer, err := js.Consumer(call, src.Stream, src.Durable)
	cancel()
	if err != nil {
		return err
	}
	messages, err := consumer.Messages(jetstream.PullMaxMessages(max(a.cfg.Concurrency*2, 64)))
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		messages.Stop()
	}()
	a.receipts.Ready()
	slots := make(chan struct{}, a.cfg.Concurrency)
	var working sync.WaitGroup
	for {
		msg, err := messages.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				break
			}
			continue // missed heartbeats and the like: the iterator pulls again
		}
		received := a.clock.Now()
		slots <- struct{}{}
		working.Add(1)
		go func() {
			defer func() { <-slots; working.Done() }()
			settleJetStream(a, msg, received, src.NakDelayMs, src.TerminateAt)
		}()
	}
	working.Wait()
	return nil
}

func settleJetStream(a *Agent, msg jetstream.Msg, received uint64, nakDelayMs int64, terminateAt *uint64) {
	var delivered uint64 = 1
	if meta, err := msg.Metadata(); err == nil {
		delivered = meta.NumDelivered
	}
	redelivered := delivered > 1
	e, refused := a.Read(msg.Data(), redelivered, received)
	if refused != nil {
		_ = msg.Term() // never redelivered; its advisory is the dead letter
		a.Refused(refused, redelivered, received)
		return
	}
	if e == nil {
		ackJetStream(msg)
		return
	}
	d := a.ledger.Decide(e)
	switch d.Action {
	case actionFailed:
		a.Process()
		if terminateAt != nil && delivered >= *terminateAt {
			_ = msg.Term() // its advisory is the dead letter
		} else {
			_ = msg.NakWithDelay(time.Duration(nakDelayMs) * time.Millisecond)
		}
	case actionProcessed:
		a.Process()
		ackJetStream(msg)
	default:
		ackJetStream(msg)
	}
	a.receipts.Delivery(kindDelivery, d.Action, d.Attempt, redelivered, e.Bench, received)
}

// ackJetStream acknowledges, as brokerbench's own consumer does (no
// confirmation awaited: an ack lost is a redelivery, which the ledger counts).
func ackJetStream(msg jetstream.Msg) {
	_ = msg.Ack()
}
