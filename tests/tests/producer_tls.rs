//! TLS and mTLS on the producer's listener, against a real producer (in-process or
//! the built binary) on the running Redis Cluster and Kafka: token mode over TLS,
//! mtls ids named by client certificates, a stalled handshake, a certificate
//! reloaded on SIGHUP, and `tally send` / `tally mtc` with `--tls`. Every
//! certificate is made here with rcgen: a throwaway CA, a server certificate for
//! 127.0.0.1 and localhost, and client certificates naming ids.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tally_client::session::{self, Line, ListSource, SessionError, SessionOptions, SessionTls};
use tally_common::keys::ClientId;
use tally_common::settings::{AuthMode, TlsSettings};
use tally_common::tls::{client_config, ClientTlsFiles};
use tally_tests::{
    free_port, http_get, isolated_settings, metric_sample, wait_listening, InProcessProducer,
    ServiceProcess,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A CA that signs certificates into a directory.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// Its certificate, PEM.
    file: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("tally test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&file, cert.pem()).expect("write CA");
        Self { cert, key, file }
    }

    /// A certificate with `sans` (IP addresses become IP SANs) for `usage`,
    /// written as `<name>.pem` and `<name>.key`.
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        let (cert_file, key_file) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        (cert_file, key_file)
    }

    /// A server certificate for 127.0.0.1 and localhost.
    fn server(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.issue(
            dir,
            name,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose SAN DNS names are `ids`.
    fn client(&self, dir: &Path, name: &str, ids: &[&str]) -> (PathBuf, PathBuf) {
        self.issue(dir, name, ids, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A client configuration trusting `ca`, presenting `identity` if given.
fn client_tls(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> Arc<ClientConfig> {
    client_config(&ClientTlsFiles {
        ca: Some(ca),
        cert: identity.map(|(c, _)| c.as_path()),
        key: identity.map(|(_, k)| k.as_path()),
    })
    .expect("client TLS config")
}

/// A raw line connection over TLS.
struct RawTls {
    lines: tokio::io::Lines<BufReader<ReadHalf<TlsStream<TcpStream>>>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
}

async fn handshake(addr: &str, config: Arc<ClientConfig>) -> std::io::Result<RawTls> {
    let socket = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("IP server name");
    let stream = tokio::time::timeout(
        REPLY_TIMEOUT,
        TlsConnector::from(config).connect(name, socket),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    let (r, w) = tokio::io::split(stream);
    Ok(RawTls {
        lines: BufReader::new(r).lines(),
        writer: w,
    })
}

impl RawTls {
    async fn connect(addr: &str, config: Arc<ClientConfig>) -> Self {
        handshake(addr, config).await.expect("TLS handshake")
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
        self.writer.flush().await.expect("flush");
    }

    async fn reply(&mut self) -> std::io::Result<Option<String>> {
        tokio::time::timeout(REPLY_TIMEOUT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no reply within {REPLY_TIMEOUT:?}"))
    }

    async fn line(&mut self) -> String {
        match self.reply().await {
            Ok(Some(line)) => line,
            other => panic!("expected a reply line, got {other:?}"),
        }
    }

    /// The producer closed the connection (EOF or a TLS close).
    async fn expect_closed(&mut self) {
        match self.reply().await {
            Ok(None) | Err(_) => {}
            Ok(Some(line)) => panic!("expected the connection closed, got {line:?}"),
        }
    }
}

/// A connection `config` cannot use: the handshake fails, or (TLS 1.3: the
/// server judges the client's certificate after the client finished) the first
/// read does, and no WELCOME ever comes.
async fn expect_handshake_refused(addr: &str, config: Arc<ClientConfig>, hello: &str) {
    let mut c = match handshake(addr, config).await {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            panic!("a refusal must be prompt, the handshake hung: {e}")
        }
        Err(_) => return,
    };
    let _ = c
        .writer
        .write_all(format!("HELLO {hello}\n").as_bytes())
        .await;
    let _ = c.writer.flush().await;
    match c.reply().await {
        Ok(None) | Err(_) => {}
        Ok(Some(line)) => panic!("a refused certificate got a reply: {line:?}"),
    }
}

/// Sends `lines` as `id` through the real client session over TLS.
async fn session_send(
    addr: &str,
    id: &str,
    lines: &[&str],
    config: Arc<ClientConfig>,
    token: Option<String>,
) -> Result<session::SessionReport, SessionError> {
    let id = ClientId::parse(id).expect("id");
    let lines: Arc<[Line]> = lines.iter().map(|l| Line::from(*l)).collect();
    let options = SessionOptions {
        deadline: Some(Instant::now() + Duration::from_secs(30)),
        token,
        tls: Some(Arc::new(
            SessionTls::new(config, None).expect("session TLS"),
        )),
        ..SessionOptions::default()
    };
    session::run(
        &[addr.to_owned()],
        Some(&id),
        ListSource::new(lines, 1),
        &options,
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_over_tls_admits_the_token_only_and_an_impostor_disturbs_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "tok");
    let (cert_file, key_file) = ca.server(dir.path(), "server");
    let secret_file = dir.path().join("secret");
    std::fs::write(
        &secret_file,
        "an example secret of at least thirty-two bytes\n",
    )
    .expect("write secret");
    let secret = tally_common::auth::Secret::read("test", &secret_file).expect("secret");
    let mut settings = isolated_settings("it-tls-token", 3).await;
    settings.producer.auth.mode = AuthMode::Token;
    settings.producer.auth.secret_file = Some(secret_file);
    settings.producer.tls = Some(TlsSettings {
        cert_file,
        key_file,
        client_ca_file: None,
    });
    let producer = InProcessProducer::start(settings).await;
    let trust = client_tls(&ca.file, None);
    let token = |id: &str| secret.mint(&ClientId::parse(id).expect("id"));

    // The real client path: right token, TLS, ACKs.
    let report = session_send(
        &producer.addr,
        "tls-sender",
        &["one", "two", "three"],
        trust.clone(),
        Some(token("tls-sender")),
    )
    .await
    .expect("send over TLS with the token");
    assert_eq!((report.first_sn, report.acked), (0, 3));

    // Pipelined: records of several KiB, each more than one read of the producer,
    // so decrypted bytes wait in rustls while the socket has nothing new. They are
    // read at once: no stall (20 s without a reply), no reconnect.
    let many: Vec<String> = (0..3000)
        .map(|i| format!("pipelined line {i:>48}"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let report = session_send(
        &producer.addr,
        "tls-pipelined",
        &many,
        trust.clone(),
        Some(token("tls-pipelined")),
    )
    .await
    .expect("pipelined over TLS");
    assert_eq!(report.acked, 3000);
    assert_eq!(
        (report.stalls, report.reconnects),
        (0, 0),
        "{:?}",
        report.errors
    );

    // The owner of an id stays connected while impostors try it.
    let mut owner = RawTls::connect(&producer.addr, trust.clone()).await;
    owner
        .send(format!("HELLO tls-owner {}\none\n", token("tls-owner")).as_bytes())
        .await;
    assert_eq!(owner.line().await, "WELCOME tls-owner 0");
    assert_eq!(owner.line().await, "ACK 1");
    for hello in [
        "HELLO tls-owner\nstolen\n".to_owned(),
        format!("HELLO tls-owner {}\nstolen\n", token("someone-else")),
        "no hello at all\n".to_owned(),
    ] {
        let mut impostor = RawTls::connect(&producer.addr, trust.clone()).await;
        impostor.send(hello.as_bytes()).await;
        let reply = impostor.line().await;
        assert!(reply.starts_with("ERR unauthorized "), "{hello:?}: {reply}");
        impostor.expect_closed().await;
    }
    // Through the client too: refused, not retried forever.
    let refused = session_send(&producer.addr, "tls-owner", &["x"], trust.clone(), None).await;
    assert!(
        matches!(&refused, Err(SessionError::Protocol(m)) if m.contains("ERR unauthorized")),
        "{refused:?}"
    );
    // Nobody stored, resumed or superseded the owner: its next line is 2.
    owner.send(b"two\n").await;
    assert_eq!(owner.line().await, "ACK 2");

    // Plain TCP to a TLS listener gets no line protocol.
    let mut plain = TcpStream::connect(&producer.addr).await.expect("connect");
    plain
        .write_all(format!("HELLO tls-owner {}\nplain\n", token("tls-owner")).as_bytes())
        .await
        .expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        REPLY_TIMEOUT,
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut reply),
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&reply).contains("WELCOME"),
        "plain text was served on a TLS listener"
    );
    owner.send(b"three\n").await;
    assert_eq!(owner.line().await, "ACK 3");

    producer.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_the_ids_a_certificate_names_and_nothing_else() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "mtls");
    let stranger_ca = Ca::new(dir.path(), "stranger");
    let (cert_file, key_file) = ca.server(dir.path(), "server");
    let cert_a = ca.client(dir.path(), "client-a", &["a"]);
    let cert_sensors = ca.client(dir.path(), "client-sensors", &["sensor-*"]);
    let cert_b = ca.client(dir.path(), "client-b", &["b"]);
    let cert_a_elsewhere = stranger_ca.client(dir.path(), "client-a-stranger", &["a"]);
    let mut settings = isolated_settings("it-tls-mtls", 3).await;
    settings.producer.auth.mode = AuthMode::Mtls;
    settings.producer.tls = Some(TlsSettings {
        cert_file,
        key_file,
        client_ca_file: Some(ca.file.clone()),
    });
    let producer = InProcessProducer::start(settings).await;
    let addr = producer.addr.as_str();

    // A certificate naming `a` may be `a`.
    let mut owner = RawTls::connect(addr, client_tls(&ca.file, Some(&cert_a))).await;
    owner.send(b"HELLO a\none\n").await;
    assert_eq!(owner.line().await, "WELCOME a 0");
    assert_eq!(owner.line().await, "ACK 1");

    // `sensor-*` covers sensor-17, through the real client path too.
    let sensors = client_tls(&ca.file, Some(&cert_sensors));
    let report = session_send(addr, "sensor-17", &["x", "y"], sensors.clone(), None)
        .await
        .expect("sensor-17 under sensor-*");
    assert_eq!(report.acked, 2);

    // Ids a certificate does not name are refused and closed, the owner undisturbed.
    for (config, hello) in [
        (sensors.clone(), "HELLO a\nstolen\n"),
        (client_tls(&ca.file, Some(&cert_b)), "HELLO a\nstolen\n"),
        (
            client_tls(&ca.file, Some(&cert_b)),
            "HELLO sensor-1\nstolen\n",
        ),
        (client_tls(&ca.file, Some(&cert_a)), "HELLO ab\nstolen\n"),
        (
            client_tls(&ca.file, Some(&cert_a)),
            "no hello: a peer-address id\n",
        ),
    ] {
        let mut impostor = RawTls::connect(addr, config).await;
        impostor.send(hello.as_bytes()).await;
        let reply = impostor.line().await;
        assert!(reply.starts_with("ERR unauthorized "), "{hello:?}: {reply}");
        impostor.expect_closed().await;
    }
    let refused = session_send(addr, "a", &["x"], client_tls(&ca.file, Some(&cert_b)), None).await;
    assert!(
        matches!(&refused, Err(SessionError::Protocol(m)) if m.contains("ERR unauthorized")),
        "{refused:?}"
    );

    // No client certificate, or one from another CA: no handshake, no reply.
    expect_handshake_refused(addr, client_tls(&ca.file, None), "a").await;
    expect_handshake_refused(addr, client_tls(&ca.file, Some(&cert_a_elsewhere)), "a").await;
    let no_cert = session_send(addr, "b", &["x"], client_tls(&ca.file, None), None).await;
    assert!(matches!(&no_cert, Err(SessionError::Tls(_))), "{no_cert:?}");

    // The owner of `a` was neither superseded nor resumed by anyone.
    owner.send(b"two\n").await;
    assert_eq!(owner.line().await, "ACK 2");
    producer.shutdown().await.expect("clean shutdown");
}

/// `tally_producer_refused_connections_total{reason="tls_handshake"}` of the
/// producer whose `/metrics` is at `observe`.
async fn refused_handshakes(observe: &str) -> f64 {
    let (status, page) = http_get(observe, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200);
    metric_sample(
        &page,
        "tally_producer_refused_connections_total",
        &[("reason", "tls_handshake")],
    )
    .unwrap_or(0.0)
}

/// Runs `tally` with `args`, `stdin` and the environment `env`; returns whether
/// it succeeded, and its stderr.
fn run_tally(args: &[&str], stdin: &str, env: &[(&'static str, String)]) -> (bool, String) {
    use std::io::Write;
    let mut cmd = std::process::Command::new(tally_tests::binary("tally"));
    cmd.arg("--config")
        .arg(tally_tests::local_config())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run tally");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("stdin");
    }
    let output = child.wait_with_output().expect("tally output");
    (
        output.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_mtls_to_the_cli_closes_stalled_handshakes_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "first");
    let (cert_file, key_file) = ca.server(dir.path(), "server");
    let cert_a = ca.client(dir.path(), "cli-a", &["cli-a"]);
    let cert_mtc = ca.client(dir.path(), "cli-mtc", &["mtc-*"]);
    let settings = isolated_settings("it-tls-binary", 3).await;
    let (port, observe_port) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{port}");
    let observe = format!("127.0.0.1:{observe_port}");
    let mut env = ServiceProcess::env_for(&settings);
    env.extend([
        ("TALLY__PRODUCER__LISTEN", addr.clone()),
        ("TALLY__PRODUCER__OBSERVE_LISTEN", observe.clone()),
        ("TALLY__PRODUCER__FIRST_LINE_TIMEOUT_MS", "700".to_owned()),
        ("TALLY__PRODUCER__AUTH__MODE", "mtls".to_owned()),
        ("TALLY__PRODUCER__TLS__CERT_FILE", path(&cert_file)),
        ("TALLY__PRODUCER__TLS__KEY_FILE", path(&key_file)),
        ("TALLY__PRODUCER__TLS__CLIENT_CA_FILE", path(&ca.file)),
    ]);
    let process = ServiceProcess::start("tally-producer", &env);
    wait_listening(&addr, Duration::from_secs(30)).await;
    wait_listening(&observe, Duration::from_secs(30)).await;

    // `tally send --tls --ca --cert --key` and `tally mtc --tls …` end to end.
    let mut cli = ServiceProcess::env_for(&settings);
    cli.push(("TALLY_RUNS_DIR", path(dir.path())));
    let (ok, out) = run_tally(
        &[
            "send",
            "--addr",
            &addr,
            "--id",
            "cli-a",
            "--tls",
            "--ca",
            &path(&ca.file),
            "--cert",
            &path(&cert_a.0),
            "--key",
            &path(&cert_a.1),
        ],
        "first\nsecond\n",
        &cli,
    );
    assert!(ok && out.contains("2 line(s) stored for cli-a"), "{out}");
    let input = dir.path().join("lines.txt");
    std::fs::write(&input, "alpha\nbeta\ngamma\n").expect("write input");
    let (ok, out) = run_tally(
        &[
            "mtc",
            "--clients",
            "2",
            "--addr",
            &addr,
            "--file",
            &path(&input),
            "--tls",
            "--ca",
            &path(&ca.file),
            "--cert",
            &path(&cert_mtc.0),
            "--key",
            &path(&cert_mtc.1),
        ],
        "",
        &cli,
    );
    assert!(ok, "tally mtc --tls: {out}");
    // The certificate for cli-a does not make it mtc's: refused, exit 1.
    let (ok, out) = run_tally(
        &[
            "send",
            "--addr",
            &addr,
            "--id",
            "mtc-x-0",
            "--tls",
            "--ca",
            &path(&ca.file),
            "--cert",
            &path(&cert_a.0),
            "--key",
            &path(&cert_a.1),
        ],
        "x\n",
        &cli,
    );
    assert!(!ok && out.contains("ERR unauthorized"), "{out}");

    // A connection that never completes its handshake is closed at the
    // first-line deadline and counted.
    let before = refused_handshakes(&observe).await;
    let started = Instant::now();
    let mut stalled = TcpStream::connect(&addr).await.expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01])
        .await
        .expect("a partial record");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut stalled, &mut buf),
    )
    .await
    .expect("closed within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "closed after {took:?}, first_line_timeout_ms is 700"
    );
    let after = refused_handshakes(&observe).await;
    assert!(
        after >= before + 1.0,
        "tls_handshake refusals {before} → {after}"
    );

    // SIGHUP: a certificate from another CA is served to new connections.
    let second = Ca::new(dir.path(), "second");
    let (new_cert, new_key) = second.server(dir.path(), "server-new");
    // Clients of the first CA keep working with the old client CA file: only the
    // server's certificate and key change.
    std::fs::copy(&new_cert, &cert_file).expect("replace cert");
    std::fs::copy(&new_key, &key_file).expect("replace key");
    process.signal("HUP");
    let trusts_second = client_tls(&second.file, Some(&cert_a));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match handshake(&addr, trusts_second.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "never reloaded: {e}\n{}",
                    process.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    c.send(b"HELLO cli-a\n").await;
    assert_eq!(c.line().await, "WELCOME cli-a 2");
    drop(c);
    match handshake(&addr, client_tls(&ca.file, Some(&cert_a))).await {
        Err(e) => assert!(
            e.to_string().contains("UnknownIssuer"),
            "a client of the first CA only: {e}"
        ),
        Ok(_) => panic!("the old certificate is still served"),
    }

    // A bad reload keeps the certificate in force.
    std::fs::write(&cert_file, "not a certificate\n").expect("break cert");
    process.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process.log_tail().contains("not reloaded") {
        assert!(
            Instant::now() < deadline,
            "no error logged:\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = RawTls::connect(&addr, trusts_second).await;
    c.send(b"HELLO cli-a\n").await;
    assert_eq!(c.line().await, "WELCOME cli-a 2");
    process.signal("TERM");
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn tls_options_that_cannot_work_are_usage_errors_naming_every_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let missing = dir.path().join("missing.pem");
    for (args, needles) in [
        (vec!["send", "--ca", "ca.pem"], vec!["--tls"]),
        (vec!["send", "--tls", "--cert", "c.pem"], vec!["--key"]),
        (
            vec![
                "send",
                "--tls",
                "--ca",
                &path(&missing),
                "--cert",
                &path(&not_pem),
                "--key",
                &path(&not_pem),
            ],
            vec!["--ca", "--cert", "--key", "missing.pem"],
        ),
        (
            vec![
                "mtc",
                "--clients",
                "1",
                "--file",
                &path(&not_pem),
                "--tls",
                "--ca",
                &path(&not_pem),
            ],
            vec!["--ca", "no certificate"],
        ),
    ] {
        let output = std::process::Command::new(tally_tests::binary("tally"))
            .arg("--config")
            .arg(tally_tests::local_config())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run tally");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "tally {args:?}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "tally {args:?}: no {needle:?} in {stderr}"
            );
        }
    }
}

#[test]
fn config_check_reads_the_tls_files_and_names_every_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "check");
    let (cert, key) = ca.server(dir.path(), "server");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let check = |cert: &Path, key: &Path, mode: &str| {
        std::process::Command::new(tally_tests::binary("tally"))
            .arg("--config")
            .arg(tally_tests::local_config())
            .args(["config", "check"])
            .env("TALLY__PRODUCER__AUTH__MODE", mode)
            .env("TALLY__PRODUCER__TLS__CERT_FILE", cert)
            .env("TALLY__PRODUCER__TLS__KEY_FILE", key)
            .env("TALLY__PRODUCER__TLS__CLIENT_CA_FILE", &ca.file)
            .output()
            .expect("run tally config check")
    };
    let good = check(&cert, &key, "mtls");
    assert!(good.status.success(), "{good:?}");
    let bad = check(&not_pem, &dir.path().join("missing.key"), "mtls");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    for needle in ["producer.tls.cert_file", "producer.tls.key_file"] {
        assert!(stderr.contains(needle), "no {needle:?} in {stderr}");
    }
    // A key that is not the certificate's.
    let (_, other_key) = ca.server(dir.path(), "other");
    let mismatched = check(&cert, &other_key, "none");
    assert_eq!(mismatched.status.code(), Some(2), "{mismatched:?}");

    // `[redis]`'s password file is read as well.
    let redis = std::process::Command::new(tally_tests::binary("tally"))
        .arg("--config")
        .arg(tally_tests::local_config())
        .args(["config", "check"])
        .env(
            "TALLY__REDIS__PASSWORD_FILE",
            dir.path().join("missing.password"),
        )
        .output()
        .expect("run tally config check");
    let stderr = String::from_utf8_lossy(&redis.stderr);
    assert_eq!(redis.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("redis.password_file"), "{stderr}");
}
