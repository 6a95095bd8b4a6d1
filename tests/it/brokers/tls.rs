//! Broker destinations over TLS (docs/brokers.md#tls): `tls://` to a
//! nats-server and `rediss://` to a redis-server each test starts with a
//! certificate a private authority issued for `localhost`, and `amqps://`
//! to a TLS-terminating proxy in front of the real RabbitMQ. Herald trusts
//! the authority as an operator would (`SSL_CERT_FILE`, as the https tests
//! do); the consumers read what was published, over TLS where the server
//! speaks nothing else.

use std::process::Stdio;
use std::sync::Arc;

use actors::test_support::tls::Issued;
use reqwest::{Method, StatusCode};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::consume::{AmqpExchange, NatsStream, RedisStream, eventually};
use super::{Consumer, event_detail, events, onboard_broker, published_twice, refusal_on_record};
use crate::delivery::{apply, tree_of};
use crate::gitserver::TestRepo;
use crate::helpers::{Rig, TestApp, watch};
use crate::https_git::{herald_trusting, pem, tls_front};

/// The password of the servers the tests start: never in Herald's logs.
const PASSWORD: &str = "tls-s3cret-pw";

/// A certificate authority and a certificate it issued for `localhost`,
/// written as PEM files for the servers, with a bundle of the authority
/// for Herald's `SSL_CERT_FILE`.
struct Files {
    issued: Issued,
    dir: TempDir,
}

impl Files {
    fn new() -> Self {
        let issued = Issued::for_names(&["localhost"]);
        let dir = tempfile::tempdir().expect("a directory for the certificates");
        for (name, text) in [
            ("ca.pem", pem("CERTIFICATE", &issued.authority)),
            ("cert.pem", pem("CERTIFICATE", &issued.certificate)),
            ("key.pem", pem("PRIVATE KEY", &issued.key)),
        ] {
            std::fs::write(dir.path().join(name), text).expect("written");
        }
        Self { issued, dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A client configuration trusting the authority (the consumers').
    fn trusting(&self) -> rustls::ClientConfig {
        trusting(&self.issued.authority)
    }
}

fn trusting(root: &CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("a root");
    rustls::ClientConfig::builder_with_provider(Arc::new(actors::tls::crypto_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A server process of a test's own, killed when dropped.
struct Server {
    port: u16,
    _child: tokio::process::Child,
    _dir: TempDir,
}

impl Server {
    /// Starts `program` with `args` (its port and data directory given by
    /// `args_for`), and waits until it listens.
    async fn start(program: &str, args_for: impl FnOnce(u16, &str) -> Vec<String>) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("a data directory");
        let child = tokio::process::Command::new(program)
            .args(args_for(port, &dir.path().display().to_string()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("{program} starts (the TLS broker tests need it): {err}"));
        let _listening = eventually(
            &format!("{program} to listen"),
            || tokio::net::TcpStream::connect(("127.0.0.1", port)),
            Result::is_ok,
        )
        .await;
        Self {
            port,
            _child: child,
            _dir: dir,
        }
    }
}

/// One broker behind TLS, its consumer, and the destinations of an app
/// publishing there: one Herald trusts, one whose certificate it refuses.
struct Broker {
    consumer: Consumer,
    trusted: Value,
    refused: Value,
    /// What the refusal says.
    reason: &'static str,
    /// Counts the TLS handshakes the proxy in front of RabbitMQ completed.
    handshakes: Option<Arc<std::sync::atomic::AtomicUsize>>,
    _server: Option<Server>,
}

impl Broker {
    async fn start(mode: &str, files: &Files) -> Self {
        match mode {
            "nats" => Self::nats(files).await,
            "redis" => Self::redis(files).await,
            _ => Self::amqp(files).await,
        }
    }

    /// A nats-server that takes TLS only and user `herald`; refused: the
    /// same server by its address, which the certificate does not name.
    async fn nats(files: &Files) -> Self {
        let server = Server::start("/usr/sbin/nats-server", |port, dir| {
            let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", &port.to_string()]
                .map(str::to_owned)
                .into();
            args.extend(["--tls", "--tlscert"].map(str::to_owned));
            args.push(files.path("cert.pem"));
            args.push("--tlskey".to_owned());
            args.push(files.path("key.pem"));
            args.extend(
                ["--user", "herald", "--pass", PASSWORD, "-js", "-sd", dir].map(str::to_owned),
            );
            args
        })
        .await;
        let client =
            async_nats::ConnectOptions::with_user_and_password("herald".into(), PASSWORD.into())
                .tls_client_config(files.trusting())
                .require_tls(true)
                .connect(format!("tls://localhost:{}", server.port))
                .await
                .expect("the consumer connects over TLS");
        let stream = NatsStream::on(client, None).await;
        let at = |host: &str| {
            stream.destination(&format!("tls://herald:{PASSWORD}@{host}:{}", server.port))
        };
        Self {
            trusted: at("localhost"),
            refused: at("127.0.0.1"),
            reason: "is not valid for its host name",
            consumer: Consumer::Nats(stream),
            handshakes: None,
            _server: Some(server),
        }
    }

    /// A redis-server that takes TLS only and a password; refused: the
    /// same server by its address.
    async fn redis(files: &Files) -> Self {
        let server = Server::start("/usr/bin/redis-server", |port, dir| {
            let mut args: Vec<String> = ["--bind", "127.0.0.1", "--port", "0", "--tls-port"]
                .map(str::to_owned)
                .into();
            args.push(port.to_string());
            for (flag, file) in [
                ("--tls-cert-file", "cert.pem"),
                ("--tls-key-file", "key.pem"),
                ("--tls-ca-cert-file", "ca.pem"),
            ] {
                args.push(flag.to_owned());
                args.push(files.path(file));
            }
            args.extend(
                [
                    "--tls-auth-clients",
                    "no",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--requirepass",
                    PASSWORD,
                    "--dir",
                    dir,
                ]
                .map(str::to_owned),
            );
            args
        })
        .await;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .expect("Redis answers");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(files.trusting()))
            .connect(ServerName::try_from("localhost").expect("a name"), tcp)
            .await
            .expect("the consumer's TLS handshake");
        let settings = redis::IntoConnectionInfo::into_connection_info(format!(
            "redis://:{PASSWORD}@localhost/0"
        ))
        .expect("connection info");
        let (connection, driver) = redis::aio::MultiplexedConnection::new_with_config(
            settings.redis_settings(),
            tls,
            redis::AsyncConnectionConfig::new(),
        )
        .await
        .expect("the consumer signs in");
        tokio::spawn(driver);
        let stream = RedisStream::on(connection);
        let at = |host: &str| {
            stream.destination(&format!("rediss://:{PASSWORD}@{host}:{}/0", server.port))
        };
        Self {
            trusted: at("localhost"),
            refused: at("127.0.0.1"),
            reason: "is not valid for its host name",
            consumer: Consumer::Redis(stream),
            handshakes: None,
            _server: Some(server),
        }
    }

    /// A TLS proxy in front of the real RabbitMQ; refused: another proxy,
    /// whose certificate an authority Herald does not trust issued.
    async fn amqp(files: &Files) -> Self {
        let exchange = AmqpExchange::new(true).await;
        let acceptor = tokio_rustls::TlsAcceptor::from(files.issued.server_config());
        let (trusted, handshakes) = tls_front(acceptor, 5672).await;
        let stranger = Issued::for_names(&["localhost"]);
        let (untrusted, _) = tls_front(
            tokio_rustls::TlsAcceptor::from(stranger.server_config()),
            5672,
        )
        .await;
        // RabbitMQ's guest signs in with `guest`; the refused destination
        // carries this test's password, which must show nowhere.
        let trusted = exchange.destination(&format!("amqps://guest:guest@localhost:{trusted}/%2f"));
        let refused = exchange.destination(&format!(
            "amqps://guest:{PASSWORD}@localhost:{untrusted}/%2f"
        ));
        Self {
            trusted,
            refused,
            reason: "is not trusted",
            consumer: Consumer::Amqp(exchange, Default::default()),
            handshakes: Some(handshakes),
            _server: None,
        }
    }
}

/// A small tree: text, a nested path and a binary file.
fn small_tree() -> TestRepo {
    let repo = TestRepo::new("main");
    repo.write("a.md", "alpha\n");
    repo.write("docs/b.md", "beta\n");
    repo.write("img.bin", [0x89u8, 0x50, 0x4e, 0x47, 0x00, 0xff]);
    repo.commit("first");
    repo
}

/// Waits until the consumer rebuilt `repo`'s tree; checks each file came
/// once and every event is delivered.
async fn delivered_once(
    app: &TestApp,
    client: &crate::helpers::TestClient,
    consumer: &Consumer,
    repo: &TestRepo,
    files: usize,
) {
    let messages = eventually(
        "the tree, over TLS",
        || consumer.all(),
        |messages| apply(messages) == tree_of(repo),
    )
    .await;
    assert_eq!(messages.len(), files, "one message per file");
    assert_eq!(published_twice(consumer, &messages), Vec::<String>::new());
    eventually(
        "every event delivered",
        || events(app, client),
        |events| events.len() == files && events.iter().all(|e| e["status"] == "delivered"),
    )
    .await;
}

#[tokio::test]
async fn each_broker_over_tls_gets_the_tree_from_a_trusted_server() {
    let files = Files::new();
    for mode in ["nats", "redis", "amqp"] {
        let broker = Broker::start(mode, &files).await;
        let repo = small_tree();
        let rig = Rig::serve(&repo).await;
        let (app, _bundle) = herald_trusting(&files.issued.authority).await;
        let client = onboard_broker(&app, "acme", mode, broker.trusted.clone(), 1).await;
        let _id = watch(&app, &client, &rig.url()).await;
        delivered_once(&app, &client, &broker.consumer, &repo, 3).await;
        if let Some(handshakes) = &broker.handshakes {
            assert!(
                handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 1,
                "amqps went through the TLS proxy"
            );
        }
        broker.consumer.remove().await;
    }
}

/// The events of an app whose broker presents a certificate Herald
/// refuses wait with the reason, class `tls`, until the destination is
/// changed to a server it trusts; then each is delivered once.
async fn a_refused_certificate_holds_the_events_until_the_destination_is_trusted(mode: &str) {
    let files = Files::new();
    let broker = Broker::start(mode, &files).await;
    let repo = small_tree();
    let rig = Rig::serve(&repo).await;
    let (app, _bundle) = herald_trusting(&files.issued.authority).await;
    let client = onboard_broker(&app, "acme", mode, broker.refused.clone(), 1).await;
    let _id = watch(&app, &client, &rig.url()).await;
    let waiting = refusal_on_record(&app, &client, &[broker.reason]).await;
    assert!(
        waiting.iter().all(|e| e["status"] == "pending"),
        "{mode}: held, not spent: {waiting:?}"
    );
    let refused = waiting
        .iter()
        .find(|e| {
            e["last_error"]
                .as_str()
                .is_some_and(|l| l.contains(broker.reason))
        })
        .expect("a refused event");
    let detail = event_detail(&app, &client, refused["event_id"].as_str().expect("id")).await;
    let attempt = &detail["attempts"][0];
    assert_eq!(attempt["error_class"], "tls", "{mode}: {detail}");
    let excerpt = attempt["response_excerpt"].as_str().unwrap_or_default();
    assert!(
        excerpt.contains("the broker's TLS certificate") && excerpt.contains(broker.reason),
        "{mode}: the attempt log says why: {detail}"
    );
    assert!(
        consumer_is_empty(&broker.consumer).await,
        "{mode}: nothing got through"
    );

    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/app",
            Some(&client.token),
            Some(json!({"destination": broker.trusted})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    delivered_once(&app, &client, &broker.consumer, &repo, 3).await;

    let (_, shown) = app
        .call(Method::GET, "/api/app", Some(&client.token), None)
        .await;
    for text in [app.logs(), shown.to_string(), detail.to_string()] {
        assert!(
            !text.contains(PASSWORD),
            "{mode}: no password shown or logged"
        );
        assert!(
            !text.contains("guest:guest@"),
            "{mode}: no password shown or logged"
        );
    }
    broker.consumer.remove().await;
}

async fn consumer_is_empty(consumer: &Consumer) -> bool {
    consumer.all().await.is_empty()
}

#[tokio::test]
async fn nats_with_a_certificate_for_another_host_holds_the_events_until_fixed() {
    a_refused_certificate_holds_the_events_until_the_destination_is_trusted("nats").await;
}

#[tokio::test]
async fn redis_with_a_certificate_for_another_host_holds_the_events_until_fixed() {
    a_refused_certificate_holds_the_events_until_the_destination_is_trusted("redis").await;
}

#[tokio::test]
async fn rabbitmq_with_an_untrusted_authority_holds_the_events_until_fixed() {
    a_refused_certificate_holds_the_events_until_the_destination_is_trusted("amqp").await;
}
