import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.util.Locale;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;

import javax.management.InstanceNotFoundException;
import javax.management.MBeanServer;
import javax.management.ObjectName;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.connect.header.Header;
import org.apache.kafka.connect.source.SourceRecord;

import io.debezium.embedded.Connect;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.RecordChangeEvent;
import io.debezium.engine.format.ChangeEventFormat;

/**
 * Debezium peer for bench/: Debezium's embedded engine (the async engine that
 * DebeziumEngine.create builds in 3.6) with the Postgres connector over pgoutput and the Outbox
 * Event Router, and a KafkaProducer that sends each routed record, the way Debezium Server's Kafka
 * sink does: send the batch, wait for every delivery callback, then mark the batch processed.
 *
 * Measures a drain: after ROWS delivery confirmations it prints one JSON line on stdout,
 *   {"system":"debezium-PROFILE","rows":N,"seconds":S,"rows_per_s":R}
 * where S runs from the first record handed to us by the engine to the N-th confirm (not from
 * "streaming started": run.sh inserts the rows after streaming starts, and that INSERT's time is
 * not the peer's). Then it waits to be killed, so that run.sh can read its /proc figures.
 * Start-up milestones go to stderr.
 *
 * Usage: DebeziumPeer defaults|tuned ROWS PG_HOST PG_PORT PG_USER PG_DB SLOT PUBLICATION KAFKA
 */
public final class DebeziumPeer {

    public static void main(String[] args) throws Exception {
        if (args.length != 9 || !(args[0].equals("defaults") || args[0].equals("tuned"))) {
            System.err.println("usage: DebeziumPeer defaults|tuned ROWS PG_HOST PG_PORT PG_USER PG_DB SLOT PUBLICATION KAFKA");
            System.exit(2);
        }
        final String profile = args[0];
        final boolean tuned = profile.equals("tuned");
        final long rows = Long.parseLong(args[1]);

        Properties engine = new Properties();
        engine.setProperty("name", "debezium-peer");
        engine.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        // Offsets only in memory: every run starts from the slot run.sh gave us.
        engine.setProperty("offset.storage", "org.apache.kafka.connect.storage.MemoryOffsetBackingStore");
        engine.setProperty("database.hostname", args[2]);
        engine.setProperty("database.port", args[3]);
        engine.setProperty("database.user", args[4]);
        engine.setProperty("database.dbname", args[5]);
        // Plaintext, as bench/run.sh gives the relay (sslmode=prefer would encrypt the stream).
        engine.setProperty("database.sslmode", "disable");
        engine.setProperty("topic.prefix", "bench");
        engine.setProperty("plugin.name", "pgoutput");
        engine.setProperty("slot.name", args[6]);
        // run.sh creates the publication FOR TABLE outbox; Debezium's default (all_tables) would
        // create one FOR ALL TABLES when it is missing.
        engine.setProperty("publication.name", args[7]);
        engine.setProperty("publication.autocreate.mode", "disabled");
        // No snapshot: stream what is committed after the slot (created at start-up) exists.
        // ("never" of older releases is gone in 3.6; no_data is its name.)
        engine.setProperty("snapshot.mode", "no_data");
        engine.setProperty("table.include.list", "public.outbox");

        // The Outbox Event Router. Each value here is its default, spelled out; only the
        // additional placement is not: it puts the event type in a `type` header, as the relay
        // does (the event id goes to an `id` header by default, as the relay's does).
        engine.setProperty("transforms", "outbox");
        engine.setProperty("transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter");
        engine.setProperty("transforms.outbox.route.by.field", "aggregatetype");
        engine.setProperty("transforms.outbox.route.topic.replacement", "outbox.event.${routedByValue}");
        engine.setProperty("transforms.outbox.table.field.event.id", "id");
        engine.setProperty("transforms.outbox.table.field.event.key", "aggregateid");
        engine.setProperty("transforms.outbox.table.field.event.payload", "payload");
        engine.setProperty("transforms.outbox.table.fields.additional.placement", "type:header:type");

        Properties producer = new Properties();
        producer.setProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args[8]);
        // As the relay: every in-sync replica confirms, no duplicates from the producer's retries.
        producer.setProperty(ProducerConfig.ACKS_CONFIG, "all");
        producer.setProperty(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        producer.setProperty(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        producer.setProperty(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());

        if (tuned) {
            // Records per poll from the connector's queue to the engine (default 2048), and so
            // per handleBatch: our sink waits for the batch's confirms, so a bigger batch keeps
            // more sends in flight.
            engine.setProperty("max.batch.size", "8192");
            // Records the connector may queue ahead of the engine (default 8192; must exceed
            // max.batch.size).
            engine.setProperty("max.queue.size", "32768");
            // How long the engine's poll waits for a batch to fill before it returns what it has
            // (default 500 ms).
            engine.setProperty("poll.interval.ms", "10");
            // No Debezium context headers (__debezium.context.connectorLogicalName, .taskId,
            // .connectorName, .runId: ~150 bytes a message; on by default since 3.2.1): the relay
            // sends nothing like them.
            engine.setProperty("extended.headers.enabled", "false");
            // Kafka 4's default linger (5 ms; it was 0 before 4.0), spelled out.
            producer.setProperty(ProducerConfig.LINGER_MS_CONFIG, "5");
            // Bytes per partition batch (default 16384): fewer, larger produce requests.
            producer.setProperty(ProducerConfig.BATCH_SIZE_CONFIG, "262144");
            // The default, spelled out: no compression, as the relay's benchmark.
            producer.setProperty(ProducerConfig.COMPRESSION_TYPE_CONFIG, "none");
        }

        final KafkaProducer<String, String> kafka = new KafkaProducer<>(producer);
        final AtomicLong confirmed = new AtomicLong();
        final AtomicLong firstRecordNanos = new AtomicLong();
        final AtomicLong doneNanos = new AtomicLong();
        final CountDownLatch done = new CountDownLatch(1);

        DebeziumEngine.ChangeConsumer<RecordChangeEvent<SourceRecord>> sink = (records, committer) -> {
            firstRecordNanos.compareAndSet(0, System.nanoTime());
            CountDownLatch batch = new CountDownLatch(records.size());
            for (RecordChangeEvent<SourceRecord> event : records) {
                SourceRecord r = event.record();
                RecordHeaders headers = new RecordHeaders();
                for (Header h : r.headers()) {
                    headers.add(h.key(), h.value() == null ? null : h.value().toString().getBytes(StandardCharsets.UTF_8));
                }
                kafka.send(new ProducerRecord<>(r.topic(), null, (String) r.key(), r.value() == null ? null : r.value().toString(), headers),
                        (metadata, error) -> {
                            if (error != null) {
                                die("delivery failed: " + error);
                            }
                            if (confirmed.incrementAndGet() == rows) {
                                doneNanos.set(System.nanoTime());
                                done.countDown();
                            }
                            batch.countDown();
                        });
            }
            batch.await();
            for (RecordChangeEvent<SourceRecord> event : records) {
                committer.markProcessed(event);
            }
            committer.markBatchFinished();
        };

        DebeziumEngine<RecordChangeEvent<SourceRecord>> debezium = DebeziumEngine.create(ChangeEventFormat.of(Connect.class))
                .using(engine)
                .notifying(sink)
                .using(new DebeziumEngine.ConnectorCallback() {
                    @Override
                    public void taskStarted() {
                        log("task started (slot exists)");
                    }
                })
                .using((success, message, error) -> {
                    if (done.getCount() > 0) {
                        die("engine stopped before the drain ended: " + message + (error == null ? "" : " (" + error + ")"));
                    }
                })
                .build();
        ExecutorService executor = Executors.newSingleThreadExecutor();
        executor.execute(debezium);

        // The engine has no "streaming" callback; its streaming metrics MBean says Connected once
        // the coordinator hands over to the streaming source (log line "Starting streaming").
        MBeanServer mbeans = ManagementFactory.getPlatformMBeanServer();
        ObjectName pattern = new ObjectName("debezium.postgres:type=connector-metrics,context=streaming,*");
        streaming: while (done.getCount() > 0) {
            for (ObjectName name : mbeans.queryNames(pattern, null)) {
                try {
                    if (Boolean.TRUE.equals(mbeans.getAttribute(name, "Connected"))) {
                        log("streaming (" + name + " Connected)");
                        break streaming;
                    }
                }
                catch (InstanceNotFoundException e) {
                    // registered and gone again: keep looking
                }
            }
            Thread.sleep(10);
        }

        done.await();
        double seconds = (doneNanos.get() - firstRecordNanos.get()) / 1e9;
        System.out.printf(Locale.ROOT, "{\"system\":\"debezium-%s\",\"rows\":%d,\"seconds\":%.3f,\"rows_per_s\":%.0f}%n",
                profile, rows, seconds, rows / seconds);
        System.out.flush();
        log("drained; waiting to be stopped");
        Thread.sleep(Long.MAX_VALUE);
    }

    private static void log(String what) {
        double sinceStart = (System.currentTimeMillis() - ManagementFactory.getRuntimeMXBean().getStartTime()) / 1000.0;
        System.err.printf(Locale.ROOT, "debezium-peer: %.3f s after JVM start: %s%n", sinceStart, what);
    }

    private static void die(String why) {
        System.err.println("debezium-peer: " + why);
        System.err.flush();
        Runtime.getRuntime().halt(1);
    }
}
