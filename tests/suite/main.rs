//! The black-box suite, one binary: each module tests one capability against real Postgres and
//! real brokers (`scripts/test.sh` starts them), running the built `outbox-relay` binary.

mod support;

mod bad_input;
mod cloudevents;
mod crash;
mod dead_letters;
mod failover;
mod hardening;
mod inbox;
mod kafka_delivery;
mod operations;
mod outage;
mod poll_kafka;
mod poll_modes;
mod poll_rabbitmq;
mod request_reply;
mod tls;
mod wal;
mod wal_setup;
