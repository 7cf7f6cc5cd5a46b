/* Limit 2 of bench/limits (issue #13): how fast this machine's Kafka takes the relay's messages
 * from a bare librdkafka producer with the relay's settings, and nothing else.
 *
 *   produce BROKERS TOPIC N [WINDOW]
 *
 * Produces N messages — the JSON that the bench's INSERT makes (~180 bytes, as PostgreSQL
 * prints the jsonb), key "key-<i % 1000>" — keeping at most WINDOW (default 10000, the relay's
 * pipeline.max_in_flight) produced but not yet delivered, and exits once every delivery report
 * came back (after one warm-up message, not counted). Settings: what the relay enforces on its idempotent producer
 * (connectors/kafka/src/properties.rs, `enforced`); everything else at librdkafka's defaults,
 * as the relay leaves them. Prints a comment line (librdkafka version, effective settings), then
 *   limit produce rows=N seconds=S rows_per_s=R cpu_us_per_msg=C
 * seconds: first produce to last delivery report; cpu: this process's utime+stime (getrusage,
 * start-up included) over N. */
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static long delivered, failed;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    if (m->err) {
        if (failed++ < 5) fprintf(stderr, "produce: delivery failed: %s\n", rd_kafka_err2str(m->err));
    } else {
        delivered++;
    }
}

static void set(rd_kafka_conf_t *conf, const char *key, const char *value) {
    char err[512];
    if (rd_kafka_conf_set(conf, key, value, err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "produce: %s=%s: %s\n", key, value, err);
        exit(2);
    }
}

static const char *get(const rd_kafka_conf_t *conf, const char *key) {
    static char values[8][128];
    static int next;
    char *value = values[next++ % 8];
    size_t size = sizeof values[0];
    if (rd_kafka_conf_get(conf, key, value, &size) != RD_KAFKA_CONF_OK) return "?";
    return value;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s BROKERS TOPIC N [WINDOW]\n", argv[0]);
        return 2;
    }
    const char *topic = argv[2];
    long n = atol(argv[3]);
    long window = argc > 4 ? atol(argv[4]) : 10000;
    if (n < 1 || window < 1) {
        fprintf(stderr, "produce: N and WINDOW must be at least 1\n");
        return 2;
    }

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    set(conf, "bootstrap.servers", argv[1]);
    set(conf, "client.id", "outbox-relay-limits");
    /* The relay's enforced properties, idempotent delivery (its default). */
    set(conf, "enable.idempotence", "true");
    set(conf, "acks", "all");
    set(conf, "partitioner", "murmur2_random");
    set(conf, "message.timeout.ms", "0");
    set(conf, "enable.gapless.guarantee", "true");
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);

    char err[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "produce: %s\n", err);
        return 1;
    }
    /* As librdkafka settled them (idempotence lowers max.in.flight.requests.per.connection). */
    const rd_kafka_conf_t *effective = rd_kafka_conf(rk);
    printf("# librdkafka %s; acks=%s enable.idempotence=%s partitioner=%s linger.ms=%s "
           "batch.size=%s batch.num.messages=%s compression.codec=%s "
           "max.in.flight.requests.per.connection=%s; window=%ld\n",
           rd_kafka_version_str(), get(effective, "acks"), get(effective, "enable.idempotence"),
           get(effective, "partitioner"), get(effective, "linger.ms"), get(effective, "batch.size"),
           get(effective, "batch.num.messages"), get(effective, "compression.codec"),
           get(effective, "max.in.flight.requests.per.connection"), window);
    fflush(stdout);
    /* Connected, and the topic's leaders known, before the clock starts. */
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    if (e) {
        fprintf(stderr, "produce: metadata of %s: %s\n", topic, rd_kafka_err2str(e));
        return 1;
    }
    if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt < 1) {
        fprintf(stderr, "produce: topic %s is missing\n", topic);
        return 1;
    }
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    /* And the idempotent producer's id acquired: its state machine may first wait out a 500 ms
     * timer ("Coordinator not up"), start-up that a long run hides. One message, not counted. */
    e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY("warm-up", 7),
                          RD_KAFKA_V_VALUE("{}", 2), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_END);
    if (e) {
        fprintf(stderr, "produce: warm-up message: %s\n", rd_kafka_err2str(e));
        return 1;
    }
    while (delivered + failed < 1) rd_kafka_poll(rk, 100);
    if (failed) return 1;
    delivered = 0;

    char note[81];
    memset(note, 'x', 80);
    note[80] = 0;
    char value[512], key[32];
    double start = now();
    for (long i = 1; i <= n; i++) {
        int vlen = snprintf(value, sizeof value,
                            "{\"n\": %ld, \"note\": \"%s\", \"items\": [{\"qty\": %ld, \"sku\": "
                            "\"sku-%ld\", \"price\": 19.99}], \"customer\": \"c-%ld\"}",
                            i, note, i % 7 + 1, i % 101, i % 977);
        int klen = snprintf(key, sizeof key, "key-%ld", i % 1000);
        while (i - 1 - delivered - failed >= window) rd_kafka_poll(rk, 100);
        for (;;) {
            e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, (size_t)klen),
                                  RD_KAFKA_V_VALUE(value, (size_t)vlen),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
            rd_kafka_poll(rk, 100);
        }
        if (e) {
            fprintf(stderr, "produce: message %ld: %s\n", i, rd_kafka_err2str(e));
            return 1;
        }
        rd_kafka_poll(rk, 0);
    }
    while (delivered + failed < n) rd_kafka_poll(rk, 100);
    double secs = now() - start;

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_us = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec +
                    ru.ru_stime.tv_usec;
    rd_kafka_flush(rk, 10000);
    rd_kafka_destroy(rk);
    if (failed) {
        fprintf(stderr, "produce: %ld of %ld messages failed\n", failed, n);
        return 1;
    }
    printf("limit produce rows=%ld seconds=%.3f rows_per_s=%.0f cpu_us_per_msg=%.1f\n", n, secs,
           n / secs, cpu_us / n);
    return 0;
}
