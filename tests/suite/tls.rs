//! TLS on every connection the relay makes: to Postgres (queries and the replication stream),
//! to RabbitMQ (`amqps`, a custom CA, a client certificate) and to Kafka (librdkafka's `ssl.*`
//! through `[sink.properties]`), each against a listener that requires a client certificate.

use crate::support;

use std::time::Duration;

use super::hardening::{drained, drop_slot, kafka, records, relay, stop, wal, INSERT_ONE};
use support::config::RelayConfig;
use support::kafka::{create_topic, read_all, Record};
use support::pg::{connect, fresh_database};
use support::rabbit::drain;
use support::relay::{command, migrate, Relay};
use support::{services, unique, wait_for};

/// TLS to Postgres, for queries and the replication stream, against the test server with
/// `ssl = on`, a CA made here, and a role that may only connect over TLS with a client
/// certificate. Other tests are unaffected: their default `sslmode=prefer` now encrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_verifies_the_server_and_presents_a_client_certificate() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let dir = std::env::temp_dir().join(unique("pgtls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, wrong) =
        (support::tls::TestCa::new(&dir, "ca"), support::tls::TestCa::new(&dir, "wrong-ca"));
    let (server_crt, server_key) = ca.issue("server", &["localhost"]);
    let (client_crt, client_key) = ca.issue("client", &["relay_tls"]);
    let ca_crt = dir.join("ca.crt").display().to_string();
    let wrong_crt = dir.join("wrong-ca.crt").display().to_string();
    drop(wrong);

    // The server's key must be the server user's own, readable by it alone.
    let admin = connect(&services().pg).await;
    let data = services().pg_data;
    let owner = std::fs::metadata(&data).unwrap();
    let (uid, gid) =
        (std::os::unix::fs::MetadataExt::uid(&owner), std::os::unix::fs::MetadataExt::gid(&owner));
    for (from, to) in [
        (&server_crt, "outbox_test_server.crt"),
        (&server_key, "outbox_test_server.key"),
        (&ca_crt, "outbox_test_ca.crt"),
    ] {
        let target = data.join(to);
        std::fs::copy(from, &target).unwrap();
        chown(&target, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let hba: String = admin.query_one("show hba_file", &[]).await.unwrap().get(0);
    let rules = "hostssl all relay_tls 127.0.0.1/32 trust clientcert=verify-full\n\
                 hostssl replication relay_tls 127.0.0.1/32 trust clientcert=verify-full\n\
                 host all relay_tls 127.0.0.1/32 reject\n\
                 host replication relay_tls 127.0.0.1/32 reject\n";
    let current = std::fs::read_to_string(&hba).unwrap();
    if !current.contains("relay_tls") {
        std::fs::write(&hba, format!("{rules}{current}")).unwrap();
    }
    let data_dir = data.display();
    for statement in [
        format!("alter system set ssl_cert_file = '{data_dir}/outbox_test_server.crt'"),
        format!("alter system set ssl_key_file = '{data_dir}/outbox_test_server.key'"),
        format!("alter system set ssl_ca_file = '{data_dir}/outbox_test_ca.crt'"),
        "alter system set ssl = on".into(),
        "select pg_reload_conf()".into(),
        "do $$ begin create role relay_tls login superuser replication; \
         exception when duplicate_object then null; end $$"
            .into(),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    let ssl_on = || async {
        connect(&services().pg).await.query_one("show ssl", &[]).await.unwrap().get::<_, String>(0)
            == "on"
    };
    wait_for("ssl = on", Duration::from_secs(10), ssl_on).await;

    let db = fresh_database("tls").await;
    let name = db.rsplit('/').next().unwrap().to_owned();
    let port = services().pg.rsplit_once(':').unwrap().1.split('/').next().unwrap().to_owned();
    let url =
        |host: &str, params: &str| format!("postgres://relay_tls@{host}:{port}/{name}?{params}");
    let client_cert = format!("sslcert={client_crt}&sslkey={client_key}");
    let (slot, prefix) = (unique("slot"), unique("tls"));
    let topic = format!("{prefix}.order");
    create_topic(&services().kafka, &topic, 1).await;
    let with_url =
        |url: String| wal(kafka(&url, &prefix), &slot).pipeline("on_poison", "halt").to_string();

    // Refused: a server certificate from another CA; the right CA but no client certificate;
    // verify-full to an address the certificate does not name.
    for (params, host, why) in [
        (
            format!("sslmode=verify-full&sslrootcert={wrong_crt}&{client_cert}"),
            "localhost",
            "UnknownIssuer",
        ),
        (format!("sslmode=verify-full&sslrootcert={ca_crt}"), "localhost", "certificate"),
        (
            format!("sslmode=verify-full&sslrootcert={ca_crt}&{client_cert}"),
            "127.0.0.1",
            "certificate not valid for name",
        ),
        ("sslmode=disable".to_string(), "localhost", "rejects connection"),
    ] {
        let out = command(&with_url(url(host, &params)), &["migrate"]).await;
        assert_eq!(out.status.code(), Some(1), "{params}: {out:?}");
        assert!(out.stderr.contains(why), "{params} must fail with {why}: {}", out.stderr);
    }

    // verify-ca accepts the address the certificate does not name; verify-full the name.
    let out = command(
        &with_url(url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca_crt}&{client_cert}"),
        )),
        &["migrate"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let config = with_url(url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca_crt}&{client_cert}"),
    ));
    let client = connect(&db).await;
    client.execute(INSERT_ONE, &[]).await.unwrap();
    let relay = Relay::spawn(&config);
    let topic_ref = &topic;
    wait_for(
        "the entry, through the TLS replication stream",
        Duration::from_secs(60),
        || async move { records(topic_ref).await.len() == 1 },
    )
    .await;
    let sessions = admin
        .query(
            "select a.backend_type, s.ssl, coalesce(s.client_dn, '') from pg_stat_activity a \
             join pg_stat_ssl s using (pid) where a.usename = 'relay_tls' and a.datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    let kinds: Vec<String> = sessions.iter().map(|r| r.get(0)).collect();
    assert!(kinds.iter().any(|k| k == "walsender"), "{kinds:?}");
    for row in &sessions {
        assert!(row.get::<_, bool>(1), "every session of the relay is encrypted: {kinds:?}");
        assert!(row.get::<_, String>(2).contains("relay_tls"), "with the client certificate");
    }
    stop(relay).await;
    drop_slot(&slot).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// RabbitMQ over TLS (`amqps://`) to a node whose certificate comes from a CA of the test's
/// own and which requires a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_tls_with_a_custom_ca_and_a_client_certificate() {
    let tls_port = support::free_port();
    let mut dir = None;
    let node = support::brokers::RabbitNode::start_with(|path| {
        dir = Some(path.to_owned());
        let ca = support::tls::TestCa::new(path, "ca");
        let (crt, key) = ca.issue("server", &["localhost", "127.0.0.1"]);
        ca.issue("client", &["relay"]);
        format!(
            "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {crt}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n",
            path.join("ca.crt").display()
        )
    })
    .await;
    let dir = dir.unwrap();
    wait_for("the TLS listener", Duration::from_secs(60), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.is_ok()
    })
    .await;

    let db = fresh_database("amqps").await;
    let prefix = unique("amqps");
    let file = |name: &str| dir.join(name).display().to_string();
    let url = format!("amqps://guest:guest@localhost:{tls_port}/%2f");
    // `[sink]` TLS keys and their files.
    let with = |tls: &[(&str, String)]| {
        let sink = RelayConfig::rabbitmq_at(&db, &url, &prefix)
            .sink("connect_timeout", "5s")
            .topology(&prefix, "direct", &[&prefix], "k");
        let sink = tls.iter().fold(sink, |sink, (key, file)| sink.sink(key, file.as_str()));
        relay(sink).route("key", "${aggregateid}").to_string()
    };
    let ca = vec![("tls_ca_file", file("ca.crt"))];
    let identity =
        vec![("tls_cert_file", file("client.crt")), ("tls_key_file", file("client.key"))];
    let both: Vec<_> = ca.iter().chain(&identity).cloned().collect();
    let out = command(&with(&[("tls_cert_file", file("client.crt"))]), &["check"]).await;
    assert!(out.stderr.contains("sink.tls_cert_file and sink.tls_key_file go together"), "{out:?}");
    let none = format!("{}/none.crt", dir.display());
    let out = command(&with(&[("tls_ca_file", none)]), &["check"]).await;
    assert!(
        !out.status.success() && format!("{out:?}").contains("cannot read sink.tls_ca_file"),
        "{out:?}"
    );

    migrate(&with(&both)).await;
    // Refused: the broker's CA unknown to the relay; no client certificate for the broker.
    for (tls, why) in [(identity.clone(), "UnknownIssuer"), (ca.clone(), "[FAIL] rabbitmq")] {
        let out = command(&with(&tls), &["check"]).await;
        assert!(!out.status.success(), "{tls:?}: {out:?}");
        assert!(format!("{}{}", out.stdout, out.stderr).contains(why), "{tls:?}: {out:?}");
    }

    let config = with(&both);
    let client = connect(&db).await;
    client.execute(INSERT_ONE, &[]).await.unwrap();
    let relay = Relay::spawn(&config);
    let client = &client;
    drained(client, "the outbox to drain over TLS", 60).await;
    let got = drain(&node.url(), &prefix).await;
    assert_eq!(got.len(), 1, "{got:?}");
    stop(relay).await;
}

/// Kafka over TLS through `[sink.properties]` (librdkafka's `security.protocol` and `ssl.*`),
/// to a listener that requires a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tls_properties_pass_through_to_a_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::TestCa::new(dir.path(), "ca");
    let wrong = support::tls::TestCa::new(dir.path(), "wrong-ca");
    drop(wrong);
    let (server_crt, server_key) = ca.issue("server", &["127.0.0.1", "localhost"]);
    let (client_crt, client_key) = ca.issue("client", &["relay"]);
    let keystore = dir.path().join("server.pem");
    let pem = std::fs::read_to_string(&server_key).unwrap()
        + &std::fs::read_to_string(&server_crt).unwrap();
    std::fs::write(&keystore, pem).unwrap();
    let ca_crt = dir.path().join("ca.crt");
    let tls_port = support::free_port();
    let kafka = support::brokers::KafkaCluster::single_with_tls(tls_port, &keystore, &ca_crt).await;
    let prefix = unique("kafkatls");
    let topic = format!("{prefix}.order");
    create_topic(&kafka.brokers(), &topic, 1).await;

    let db = fresh_database("kafkatls").await;
    let config = relay(RelayConfig::kafka_at(&db, &format!("127.0.0.1:{tls_port}"), &prefix))
        .sink("metadata_timeout", "5s")
        .set("sink.properties", "security.protocol", "ssl")
        .set("sink.properties", "ssl.ca.location", ca_crt.display().to_string())
        .set("sink.properties", "ssl.certificate.location", client_crt.as_str())
        .set("sink.properties", "ssl.key.location", client_key.as_str())
        .pipeline("on_poison", "halt")
        .to_string();
    migrate(&config).await;
    let wrong_ca = config.replace(
        &ca_crt.display().to_string(),
        &dir.path().join("wrong-ca.crt").display().to_string(),
    );
    let out = command(&wrong_ca, &["check"]).await;
    assert!(!out.status.success() && out.stdout.contains("[FAIL] kafka"), "{out:?}");

    let client = connect(&db).await;
    client.execute(INSERT_ONE, &[]).await.unwrap();
    let relay = Relay::spawn(&config);
    let client = &client;
    drained(client, "the outbox to drain over TLS", 60).await;
    let got: Vec<Record> = read_all(&kafka.brokers(), &topic).await.into_iter().flatten().collect();
    assert_eq!(got.len(), 1, "{got:?}");
    stop(relay).await;
}
