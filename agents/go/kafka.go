package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// consumeKafka reads the topic in the group brokerbench named, with
// kafka-go's Reader: fetch, process, then commit (kafka-go commits the
// offsets handed to CommitMessages every second). A message that fails is
// retried in process after the retry delay, its offset held back; after its
// last attempt it is produced to the dead-letter topic with Spring Kafka's
// kafka_dlt-* headers, and committed only once that write is acknowledged.
// An event of this run that cannot be decoded is refused: never retried,
// dead-lettered the same way when the group has failures, else committed.
func consumeKafka(ctx context.Context, a *Agent) error {
	var src struct {
		Topic           string `json:"topic"`
		GroupID         string `json:"group_id"`
		DeadLetterTopic string `json:"dead_letter_topic"`
		MaxDeliveries   uint32 `json:"max_deliveries"`
		RetryDelayMs    int64  `json:"retry_delay_ms"`
		FetchWaitMaxMs  int64  `json:"fetch_wait_max_ms"`
	}
	if err := json.Unmarshal(a.cfg.Source, &src); err != nil {
		return err
	}
	brokers := strings.Split(a.cfg.URL, ",")
	reader := kafka.NewReader(kafka.ReaderConfig{
		Brokers:           brokers,
		GroupID:           src.GroupID,
		Topic:             src.Topic,
		Dialer:            &kafka.Dialer{Timeout: CallTimeout, ClientID: "brokerbench-agent-go"},
		MinBytes:          1,
		MaxBytes:          10 << 20,
		MaxWait:           time.Duration(max(src.FetchWaitMaxMs, 1)) * time.Millisecond,
		ReadBatchTimeout:  CallTimeout,
		HeartbeatInterval: 3 * time.Second,
		SessionTimeout:    30 * time.Second,
		RebalanceTimeout:  30 * time.Second,
		CommitInterval:    time.Second,
		StartOffset:       kafka.FirstOffset,
		ReadBackoffMin:    100 * time.Millisecond,
		ReadBackoffMax:    time.Duration(a.cfg.BackoffMaxMs) * time.Millisecond,
	})
	defer reader.Close()
	dead := &kafka.Writer{
		Addr:         kafka.TCP(brokers...),
		Topic:        src.DeadLetterTopic,
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond,
		ReadTimeout:  CallTimeout,
		WriteTimeout: CallTimeout,
	}
	defer dead.Close()
	group := &kafkaGroup{a: a, reader: reader, dead: dead, topic: src.Topic, groupID: src.GroupID,
		maxDeliveries: src.MaxDeliveries, retryDelayMs: src.RetryDelayMs}
	// Ready once the reader has joined the group: kafka-go joins on the
	// first fetch, in the background.
	fetched := make(chan fetchResult, 1)
	go func() {
		m, err := reader.FetchMessage(ctx)
		fetched <- fetchResult{m, err, a.clock.Now()}
	}()
	if err := awaitJoin(ctx, reader, fetched); err != nil {
		return err
	}
	a.receipts.Ready()
	first := true
	for {
		var r fetchResult
		if first {
			r, first = <-fetched, false
		} else {
			m, err := reader.FetchMessage(ctx)
			r = fetchResult{m, err, a.clock.Now()}
		}
		if r.err != nil {
			if ctx.Err() != nil || errors.Is(r.err, context.Canceled) {
				return nil
			}
			return r.err
		}
		if err := group.settle(ctx, &r.m, r.received); err != nil {
			return err
		}
	}
}

type fetchResult struct {
	m        kafka.Message
	err      error
	received uint64
}

// awaitJoin waits until the reader has joined its group (its stats count a
// rebalance) or already fetched a message.
func awaitJoin(ctx context.Context, reader *kafka.Reader, fetched chan fetchResult) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if reader.Stats().Rebalances > 0 {
			return nil
		}
		select {
		case r := <-fetched:
			fetched <- r
			return r.err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("did not join group within 60 s")
}

// kafkaGroup is what settling the group's messages takes.
type kafkaGroup struct {
	a             *Agent
	reader        *kafka.Reader
	dead          *kafka.Writer
	topic         string
	groupID       string
	maxDeliveries uint32
	retryDelayMs  int64
}

// settle handles one message until it is processed, skipped, dead-lettered
// or refused, each attempt with a receipt of its own, then commits it.
func (g *kafkaGroup) settle(ctx context.Context, m *kafka.Message, received uint64) error {
	e, refused := g.a.Read(m.Value, false, received)
	settled := true
	switch {
	case refused != nil:
		settled = g.refuse(ctx, m, refused, received)
	case e != nil:
		settled = g.process(ctx, m, e, received)
	}
	if !settled {
		return nil // not committed: the group gets it again
	}
	call, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	return g.reader.CommitMessages(call, *m)
}

// process decides and processes e; a failed attempt is retried in process
// after the retry delay, and dead-lettered after the last. It says whether
// the message was settled before ctx ended.
func (g *kafkaGroup) process(ctx context.Context, m *kafka.Message, e *OrderCreated, received uint64) bool {
	for {
		d := g.a.ledger.Decide(e)
		if d.Action != actionFailed {
			if d.Action == actionProcessed {
				g.a.Process()
			}
			g.a.receipts.Delivery(kindDelivery, d.Action, d.Attempt, false, e.Bench, received)
			return true
		}
		g.a.Process()
		reason := fmt.Sprintf("processing failed %d times", d.Attempt)
		if d.Attempt >= g.maxDeliveries && g.deadLetter(ctx, m, reason, e.TraceID) == nil {
			g.a.receipts.Delivery(kindDelivery, actionDeadLettered, d.Attempt, false, e.Bench, received)
			return true
		}
		g.a.receipts.Delivery(kindDelivery, actionFailed, d.Attempt, false, e.Bench, received)
		if !sleep(ctx, time.Duration(g.retryDelayMs)*time.Millisecond) {
			return false
		}
		received = g.a.clock.Now()
	}
}

// refuse gives up a message of this run that could not be decoded, without
// retrying or processing it: a group with failures dead-letters it, writing
// it again with backoff until the write is acknowledged; a group without
// lets it go. It says whether the message was settled before ctx ended.
func (g *kafkaGroup) refuse(ctx context.Context, m *kafka.Message, bench *Bench, received uint64) bool {
	for attempt := 0; g.a.cfg.Failures != nil; attempt++ {
		err := g.deadLetter(ctx, m, "could not decode the event", header(m, "trace_id"))
		if err == nil {
			break
		}
		fmt.Fprintf(g.a.stderr(), "kafka: dead-lettering a refused event: %v; retrying\n", err)
		if !sleep(ctx, g.a.Backoff(attempt)) {
			return false
		}
	}
	g.a.Refused(bench, false, received)
	return true
}

// deadLetter produces m to the dead-letter topic as Spring Kafka's
// DeadLetterPublishingRecoverer does, and waits for the acknowledgement.
func (g *kafkaGroup) deadLetter(ctx context.Context, m *kafka.Message, reason, traceID string) error {
	partition := make([]byte, 4)
	binary.BigEndian.PutUint32(partition, uint32(m.Partition))
	offset := make([]byte, 8)
	binary.BigEndian.PutUint64(offset, uint64(m.Offset))
	headers := []kafka.Header{
		{Key: "kafka_dlt-original-topic", Value: []byte(g.topic)},
		{Key: "kafka_dlt-original-partition", Value: partition},
		{Key: "kafka_dlt-original-offset", Value: offset},
		{Key: "kafka_dlt-original-consumer-group", Value: []byte(g.groupID)},
		{Key: "kafka_dlt-exception-message", Value: []byte(reason)},
	}
	if traceID != "" {
		headers = append(headers, kafka.Header{Key: "trace_id", Value: []byte(traceID)})
	}
	call, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	return g.dead.WriteMessages(call, kafka.Message{Key: m.Key, Value: m.Value, Headers: headers})
}

// header is the value of m's header `name`, or empty.
func header(m *kafka.Message, name string) string {
	for _, h := range m.Headers {
		if h.Key == name {
			return string(h.Value)
		}
	}
	return ""
}

// sleep waits for d and says true, or says false as soon as ctx ends.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
