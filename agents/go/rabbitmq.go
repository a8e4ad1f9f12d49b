package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// consumeRabbitMQ consumes the group's queue, which brokerbench declared,
// with manual acks after processing and a prefetch limit; a lost connection
// is opened again with backoff and consuming goes on.
func consumeRabbitMQ(ctx context.Context, a *Agent) error {
	var src struct {
		Queue         string `json:"queue"`
		Prefetch      int    `json:"prefetch"`
		RequeueFailed bool   `json:"requeue_failed"`
		MaxDeliveries uint32 `json:"max_deliveries"`
		RetryDelayMs  int64  `json:"retry_delay_ms"`
	}
	if err := json.Unmarshal(a.cfg.Source, &src); err != nil {
		return err
	}
	ready := false
	for attempt := 0; ; attempt++ {
		err := consumeRabbitMQOnce(ctx, a, src.Queue, src.Prefetch, func(d *amqp.Delivery, received uint64) {
			settleRabbitMQ(a, d, received, src.RequeueFailed, src.MaxDeliveries, src.RetryDelayMs)
		}, &ready)
		if ctx.Err() != nil {
			return nil
		}
		if !ready {
			return err // never subscribed: brokerbench reports it
		}
		fmt.Fprintf(a.stderr(), "rabbitmq: %v; reconnecting\n", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(a.Backoff(attempt)):
		}
	}
}

// consumeRabbitMQOnce consumes over one connection until it breaks or ctx ends.
func consumeRabbitMQOnce(ctx context.Context, a *Agent, queue string, prefetch int,
	settle func(*amqp.Delivery, uint64), ready *bool) error {
	conn, err := amqp.DialConfig(a.cfg.URL, amqp.Config{
		Dial:       amqp.DefaultDial(CallTimeout),
		Heartbeat:  10 * time.Second,
		Properties: amqp.Table{"connection_name": "brokerbench-agent-go-" + a.cfg.Group},
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return err
	}
	deliveries, err := ch.ConsumeWithContext(ctx, queue, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	if !*ready {
		*ready = true
		a.receipts.Ready()
	}
	slots := make(chan struct{}, a.cfg.Concurrency)
	var working sync.WaitGroup
	defer working.Wait()
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	for {
		select {
		case <-ctx.Done():
			return nil
		case why := <-closed:
			return fmt.Errorf("connection closed: %v", why)
		case d, ok := <-deliveries:
			if !ok {
				return fmt.Errorf("the consumer was cancelled")
			}
			received := a.clock.Now()
			slots <- struct{}{}
			working.Add(1)
			go func() {
				defer func() { <-slots; working.Done() }()
				settle(&d, received)
			}()
		}
	}
}

func settleRabbitMQ(a *Agent, d *amqp.Delivery, received uint64, requeueFailed bool, maxDeliveries uint32, retryDelayMs int64) {
	e, refused := a.Read(d.Body, d.Redelivered, received)
	if refused != nil {
		// Not requeued: the queue's dead-letter exchange, when the group
		// has one, takes it; otherwise RabbitMQ drops it.
		_ = d.Reject(false)
		a.Refused(refused, d.Redelivered, received)
		return
	}
	if e == nil {
		_ = d.Ack(false)
		return
	}
	dec := a.ledger.Decide(e)
	switch dec.Action {
	case actionFailed:
		a.Process()
		// RabbitMQ cannot delay a redelivery: the consumer waits. A quorum
		// queue counts deliveries and dead-letters at its limit; a classic
		// queue dead-letters what is rejected without requeueing.
		time.Sleep(time.Duration(retryDelayMs) * time.Millisecond)
		_ = d.Reject(requeueFailed || dec.Attempt < maxDeliveries)
	case actionProcessed:
		a.Process()
		_ = d.Ack(false)
	default:
		_ = d.Ack(false)
	}
	a.receipts.Delivery(kindDelivery, dec.Action, dec.Attempt, d.Redelivered, e.Bench, received)
}
