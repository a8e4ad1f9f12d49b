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
		if err := settleKafka(ctx, a, reader, dead, &r.m, r.received, src.Topic, src.GroupID, src.MaxDeliveries, src.RetryDelayMs); err != nil {
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

// settleKafka handles one message until it is processed, skipped or
// dead-lettered, each attempt with a receipt of its own, then commits it.
func settleKafka(ctx context.Context, a *Agent, reader *kafka.Reader, dead *kafka.Writer,
	m *kafka.Message, received uint64, topic, groupID string, maxDeliveries uint32, retryDelayMs int64) error {
	e := a.Read(m.Value, false, received)
	for e != nil {
		d := a.ledger.Decide(e)
		if d.Action == actionFailed {
			a.Process()
			if d.Attempt >= maxDeliveries && deadLetter(ctx, dead, m, topic, groupID, d.Attempt, e.TraceID) == nil {
				a.receipts.Delivery(kindDelivery, actionDeadLettered, d.Attempt, false, e.Bench, received)
				break
			}
			a.receipts.Delivery(kindDelivery, actionFailed, d.Attempt, false, e.Bench, received)
			select {
			case <-ctx.Done():
				return nil // not committed: the group gets it again
			case <-time.After(time.Duration(retryDelayMs) * time.Millisecond):
			}
			received = a.clock.Now()
			continue
		}
		if d.Action == actionProcessed {
			a.Process()
		}
		a.receipts.Delivery(kindDelivery, d.Action, d.Attempt, false, e.Bench, received)
		break
	}
	call, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	return reader.CommitMessages(call, *m)
}

// deadLetter produces m to the dead-letter topic as Spring Kafka's
// DeadLetterPublishingRecoverer does, and waits for the acknowledgement.
func deadLetter(ctx context.Context, dead *kafka.Writer, m *kafka.Message, topic, groupID string, attempts uint32, traceID string) error {
	partition := make([]byte, 4)
	binary.BigEndian.PutUint32(partition, uint32(m.Partition))
	offset := make([]byte, 8)
	binary.BigEndian.PutUint64(offset, uint64(m.Offset))
	headers := []kafka.Header{
		{Key: "kafka_dlt-original-topic", Value: []byte(topic)},
		{Key: "kafka_dlt-original-partition", Value: partition},
		{Key: "kafka_dlt-original-offset", Value: offset},
		{Key: "kafka_dlt-original-consumer-group", Value: []byte(groupID)},
		{Key: "kafka_dlt-exception-message", Value: []byte(fmt.Sprintf("processing failed %d times", attempts))},
	}
	if traceID != "" {
		headers = append(headers, kafka.Header{Key: "trace_id", Value: []byte(traceID)})
	}
	call, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	return dead.WriteMessages(call, kafka.Message{Key: m.Key, Value: m.Value, Headers: headers})
}
