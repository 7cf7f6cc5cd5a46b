// Limit 3 of bench/limits (issue #13): how fast this machine's RabbitMQ confirms the relay's
// messages from a bare AMQP 0-9-1 publisher with the relay's publishing window, and nothing else.
//
//	publish -url AMQP_URL -n N [-window 10000] [-lanes 4]
//
// Like the relay's RabbitMQ sink (connectors/rabbitmq/src/sink.rs): one connection, `lanes`
// channels in confirm mode, a key always on the same channel (FNV-1a of the key modulo the lane
// count), mandatory publishes of persistent messages (delivery mode 2) with the key as routing
// key. Each lane keeps at most window/lanes messages unconfirmed (the relay's
// pipeline.max_in_flight, shared out). N messages — the JSON that the bench's INSERT makes, key
// "key-<i % 1000>" — carry what the relay's messages carry with its default route: message_id,
// timestamp, app_id, type and content type, and the headers id, outbox-position, outbox-pipeline
// and type. They go where bench/run.sh sends the relay's: a durable x-consistent-hash exchange
// (limits.publish.hash) over two durable queues (limits.publish.1 and .2, weight 1 each), purged
// before and after. (A direct exchange into one queue with bare messages, this tool's first
// shape, is not the relay's workload: on 2 cores the broker confirmed it ~1.5× as fast.)
// Prints one line, once every message is confirmed:
//
//	limit publish rows=N seconds=S rows_per_s=R cpu_us_per_msg=C
//
// seconds: first publish to last confirm; cpu: this process's utime+stime (getrusage, start-up
// included) over N.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const (
	exchange = "limits.publish.hash"
	keys     = 1000
)

var queues = []string{"limits.publish.1", "limits.publish.2"}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "publish: "+format+"\n", args...)
	os.Exit(1)
}

// laneOf is the relay's lane_of: FNV-1a (64 bit) of the key, modulo the lane count.
func laneOf(key string, lanes int) int {
	hash := uint64(0xcbf29ce484222325)
	for i := 0; i < len(key); i++ {
		hash ^= uint64(key[i])
		hash *= 0x100000001b3
	}
	return int(hash % uint64(lanes))
}

func main() {
	url := flag.String("url", os.Getenv("OUTBOX_RELAY_TEST_AMQP"), "AMQP URL")
	n := flag.Int("n", 100000, "messages")
	window := flag.Int("window", 10000, "most unconfirmed messages, shared out among the lanes")
	lanes := flag.Int("lanes", 4, "channels publishing in parallel")
	flag.Parse()
	if *n < 1 || *lanes < 1 || *window < *lanes {
		fail("-n and -lanes must be at least 1, -window at least -lanes")
	}

	conn, err := amqp.Dial(*url)
	if err != nil {
		fail("connecting: %v", err)
	}
	defer conn.Close()
	setup, err := conn.Channel()
	if err != nil {
		fail("opening a channel: %v", err)
	}
	if err := setup.ExchangeDeclare(exchange, "x-consistent-hash", true, false, false, false, nil); err != nil {
		fail("declaring exchange %s: %v", exchange, err)
	}
	for _, queue := range queues {
		if _, err := setup.QueueDeclare(queue, true, false, false, false, nil); err != nil {
			fail("declaring queue %s: %v", queue, err)
		}
		if err := setup.QueueBind(queue, "1", exchange, false, nil); err != nil {
			fail("binding %s: %v", queue, err)
		}
	}
	purge := func() {
		for _, queue := range queues {
			if _, err := setup.QueuePurge(queue, false); err != nil {
				fail("purging %s: %v", queue, err)
			}
		}
	}
	purge()

	type lane struct {
		ch       *amqp.Channel
		confirms chan amqp.Confirmation
		returns  chan amqp.Return
	}
	share := *window / *lanes
	all := make([]lane, *lanes)
	for i := range all {
		ch, err := conn.Channel()
		if err != nil {
			fail("opening lane %d: %v", i, err)
		}
		if err := ch.Confirm(false); err != nil {
			fail("confirm.select on lane %d: %v", i, err)
		}
		all[i] = lane{ch, ch.NotifyPublish(make(chan amqp.Confirmation, share)),
			ch.NotifyReturn(make(chan amqp.Return, 16))}
	}
	// Each lane's messages, in order: what the relay's engine hands that lane.
	mine := make([][]int, *lanes)
	for i := 1; i <= *n; i++ {
		k := fmt.Sprintf("key-%d", i%keys)
		l := laneOf(k, *lanes)
		mine[l] = append(mine[l], i)
	}
	note := strings.Repeat("x", 80)

	var returned atomic.Int64
	var wg sync.WaitGroup
	ctx := context.Background()
	start := time.Now()
	for li, l := range all {
		todo := mine[li]
		go func() {
			for r := range l.returns {
				if returned.Add(1) <= 5 {
					fmt.Fprintf(os.Stderr, "publish: returned: %d %s (routing key %s)\n",
						r.ReplyCode, r.ReplyText, r.RoutingKey)
				}
			}
		}()
		// The window: a slot per unconfirmed message, freed by its confirm.
		slots := make(chan struct{}, share)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range todo {
				c, ok := <-l.confirms
				if !ok {
					fail("a channel closed before all its confirms came")
				}
				if !c.Ack {
					fail("message %d nacked", c.DeliveryTag)
				}
				<-slots
			}
		}()
		go func() {
			defer wg.Done()
			for _, i := range todo {
				slots <- struct{}{}
				body := fmt.Sprintf(`{"n": %d, "note": "%s", "items": [{"qty": %d, "sku": "sku-%d", "price": 19.99}], "customer": "c-%d"}`,
					i, note, i%7+1, i%101, i%977)
				id := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
				msg := amqp.Publishing{
					ContentType:  "application/json",
					DeliveryMode: amqp.Persistent,
					MessageId:    id,
					Timestamp:    time.Now(),
					AppId:        "outbox-relay",
					Type:         "Benchmarked",
					Headers: amqp.Table{
						"id":              id,
						"outbox-position": fmt.Sprintf("wal:1/%X:%d", 0x10000000+i*64, i%10),
						"outbox-pipeline": "default",
						"type":            "Benchmarked",
					},
					Body: []byte(body),
				}
				if err := l.ch.PublishWithContext(ctx, exchange, fmt.Sprintf("key-%d", i%keys), true, false, msg); err != nil {
					fail("publishing message %d: %v", i, err)
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if r := returned.Load(); r > 0 {
		fail("%d of %d messages were returned as unroutable", r, *n)
	}
	// Every message confirmed is in a queue (they have no consumer).
	held := 0
	for _, queue := range queues {
		q, err := setup.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			fail("inspecting %s: %v", queue, err)
		}
		held += q.Messages
	}
	if held != *n {
		fail("the queues hold %d messages, not %d", held, *n)
	}
	purge()
	fmt.Printf("limit publish rows=%d seconds=%.3f rows_per_s=%.0f cpu_us_per_msg=%.1f\n",
		*n, secs, float64(*n)/secs, float64(cpu.Microseconds())/float64(*n))
}
