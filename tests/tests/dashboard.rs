//! `tally serve` on the live stack: a pipeline (producer, counter, aggregator) and
//! `tally serve` run as processes; the JSON API answers and refuses as documented;
//! then headless Chromium (tests/browser/dashboard.cjs, playwright-core) opens the
//! dashboard, watches a client and a message that do not exist yet, and only then
//! is the message sent through the pipeline. The page must show its count — for the
//! client, the message and in the top list — pushed by the event stream. The same
//! check on a copy of the page whose event stream the browser blocks must fail, so
//! the check cannot pass without live updates.
//!
//! Needs Debian `chromium` and playwright-core: `scripts/test` installs them
//! (scripts/lib/browser.sh) and sets TALLY_BROWSER_REQUIRED, under which a missing
//! browser fails the test; run alone without them, the test skips with a message.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tally_client::session::send_all;
use tally_common::{ClientId, MessageHash};
use tally_tests::pipeline::{isolated, service_env, start_aggregator, start_counter};
use tally_tests::{
    binary, free_port, http_get, http_get_with, local_config, repo_root, unique, wait_listening,
    ServiceProcess,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Times the test message is sent (its client's and its own expected count).
const REPEAT: usize = 3;

struct Browser {
    chromium: PathBuf,
    node_modules: PathBuf,
}

/// The browser and playwright-core, or why the test cannot run.
fn browser() -> Result<Browser, String> {
    if let Ok(reason) = std::env::var("TALLY_BROWSER_SKIP") {
        return Err(reason);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let chromium = std::env::var("TALLY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node_modules = std::env::var("TALLY_NODE_MODULES")
        .unwrap_or_else(|_| format!("{home}/.cache/tally/node/node_modules"));
    let browser = Browser {
        chromium: chromium.into(),
        node_modules: node_modules.into(),
    };
    if !browser.chromium.exists() {
        return Err(format!("no browser at {}", browser.chromium.display()));
    }
    if !browser.node_modules.join("playwright-core").exists() {
        return Err(format!(
            "no playwright-core in {}",
            browser.node_modules.display()
        ));
    }
    Ok(browser)
}

/// `tally serve` as a child process, killed when dropped.
struct Serve {
    child: std::process::Child,
    log: PathBuf,
}

impl Serve {
    fn start(env: &[(&str, String)], max_streams: u32) -> Self {
        Self::start_on("127.0.0.1:0", env, max_streams)
    }

    fn start_on(listen: &str, env: &[(&str, String)], max_streams: u32) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique("tally-serve")));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = std::process::Command::new(binary("tally"));
        cmd.arg("--config")
            .arg(local_config())
            .args(["serve", "--listen", listen, "--max-streams"])
            .arg(max_streams.to_string())
            .env("TALLY__LOG__FORMAT", "plain")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start tally serve");
        Self { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The bound address, from its `serving the dashboard on http://…/` line.
    async fn addr(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.log_text();
            let marker = "serving the dashboard on http://";
            if let Some(start) = text.find(marker).map(|i| i + marker.len()) {
                if let Some(end) = text[start..].find('/') {
                    return text[start..start + end].to_owned();
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tally serve exited {status}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "tally serve did not start:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

async fn get(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (status, json(&body))
}

/// Opens an event stream and returns the connection once its headers arrived.
async fn open_stream(addr: &str) -> (u16, tokio::net::TcpStream) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("stream headers in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before headers: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_message_sent_while_it_is_open() {
    let browser = match browser() {
        Ok(b) => b,
        Err(reason) if std::env::var("TALLY_BROWSER_REQUIRED").as_deref() == Ok("1") => {
            panic!("headless browser required but unusable: {reason}")
        }
        Err(reason) => {
            eprintln!(
                "SKIPPED dashboard test: {reason} (source scripts/lib/browser.sh && browser_setup)"
            );
            return;
        }
    };

    let settings = isolated("it-dash", 3).await;
    let prefix = settings.redis.prefix.clone();
    let ingest = format!("127.0.0.1:{}", free_port());
    let mut env = service_env(&settings, &[]);
    env.push(("TALLY__PRODUCER__LISTEN", ingest.clone()));
    let _producer = ServiceProcess::start("tally-producer", &env);
    let _counter = start_counter(&settings, "dash", &[]);
    let _aggregator = start_aggregator(&settings, &[]);
    const MAX_STREAMS: u32 = 3;
    let mut serve = Serve::start(&service_env(&settings, &[]), MAX_STREAMS);
    let addr = serve.addr().await;
    wait_listening(&ingest, Duration::from_secs(30)).await;

    // The API: answers, and refusals as JSON with their status codes.
    let client = format!("{prefix}-web");
    let text = format!("dashboard message {}", unique("m"));
    let hash = MessageHash::of(text.as_bytes()).to_string();
    let (status, view) = get(&addr, &format!("/api/clients/{client}")).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (view["client"].as_str(), view["count"].as_u64()),
        (Some(client.as_str()), Some(0))
    );
    let (status, view) = get(&addr, "/api/clients/bad%20id").await;
    assert_eq!(status, 400, "{view}");
    assert!(
        view["error"]
            .as_str()
            .is_some_and(|e| e.contains("client id")),
        "{view}"
    );
    let (status, view) = get(&addr, &format!("/api/messages?hash={hash}")).await;
    assert_eq!((status, view["count"].as_u64()), (200, Some(0)), "{view}");
    let (status, view) = get(&addr, "/api/messages").await;
    assert_eq!(status, 400, "{view}");
    let (status, view) = get(&addr, "/api/messages?hash=nothex").await;
    assert_eq!(status, 400, "{view}");
    for bad in ["0", "1001", "x"] {
        let (status, view) = get(&addr, &format!("/api/top?n={bad}")).await;
        assert_eq!(status, 400, "n={bad}: {view}");
    }
    let (status, view) = get(&addr, "/api/top?n=5").await;
    assert_eq!(
        (status, view.as_array().map(Vec::len)),
        (200, Some(0)),
        "{view}"
    );
    // Kafka may still be finding the new groups' coordinator: 503 until it has.
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let (status, view) = get(&addr, "/api/status").await;
        if status == 200 {
            break view;
        }
        assert!(
            status == 503 && view["error"].is_string(),
            "{status}: {view}"
        );
        assert!(Instant::now() < deadline, "status still {status}: {view}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        view["groups"].is_array() && view["producers"].is_array(),
        "{view}"
    );
    let (status, view) = get(&addr, "/api/nothing").await;
    assert_eq!(status, 404, "{view}");
    let (status, page) = http_get(&addr, "/").await.expect("GET /");
    assert!(
        status == 200 && page.contains("<title>tally</title>"),
        "{status}: {page}"
    );

    // The stream bound: MAX_STREAMS open, the next refused with 503.
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS {
        let (status, stream) = open_stream(&addr).await;
        assert_eq!(status, 200);
        open.push(stream);
    }
    let (status, view) = get(&addr, "/api/events").await;
    assert_eq!(status, 503, "{view}");
    drop(open);
    // The server notices closed streams on its next write (within a tick).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, stream) = open_stream(&addr).await;
        drop(stream);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "stream permits not released");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The browser: page open and watching before the message exists.
    let script = repo_root().join("tests/browser/dashboard.cjs");
    let screenshot = std::env::temp_dir().join(format!("{}.png", unique("dashboard")));
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .arg(&browser.chromium)
        .arg(&client)
        .arg(&text)
        .arg(REPEAT.to_string())
        .env("NODE_PATH", &browser.node_modules)
        .env("DASHBOARD_SCREENSHOT", &screenshot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let stdout = node.stdout.take().expect("stdout");
    let mut stderr = node.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut output = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let is_ready = line == "READY";
            output.push(line);
            if is_ready {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !ready {
        let _ = node.kill().await;
        panic!(
            "page not ready:\n{}\n{}\nserve log:\n{}",
            output.join("\n"),
            errors.await.unwrap_or_default(),
            serve.log_text()
        );
    }

    // Now the message goes through the pipeline.
    let id = ClientId::parse(&client).expect("client id");
    let report = send_all(
        &[ingest],
        &id,
        &vec![text.clone(); REPEAT],
        Instant::now() + Duration::from_secs(60),
    )
    .await
    .expect("send");
    assert_eq!(report.acked, REPEAT as u64);

    let status = tokio::time::timeout(Duration::from_secs(180), async {
        while let Ok(Some(line)) = lines.next_line().await {
            output.push(line);
        }
        node.wait().await
    })
    .await
    .expect("browser script finished in time")
    .expect("browser script");
    let stderr = errors.await.unwrap_or_default();
    let result = output
        .iter()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(json)
        .unwrap_or_else(|| {
            panic!(
                "no RESULT from the browser:\n{}\n{stderr}",
                output.join("\n")
            )
        });
    let context = format!(
        "{result:#}\nbrowser log:\n{stderr}\nserve log:\n{}",
        serve.log_text()
    );
    assert!(result["fatal"].is_null(), "{context}");
    assert_eq!(
        result["live"]["ok"], true,
        "the live page did not show the counts: {context}"
    );
    let want = REPEAT.to_string();
    assert_eq!(
        result["live"]["seen"]["message"].as_str(),
        Some(want.as_str()),
        "{context}"
    );
    assert_eq!(
        result["live"]["seen"]["client"].as_str(),
        Some(want.as_str()),
        "{context}"
    );
    assert_eq!(
        result["live"]["seen"]["topText"].as_str(),
        Some(text.as_str()),
        "{context}"
    );
    assert_eq!(
        result["frozen"]["ok"], false,
        "the page without its event stream passed the same check: it does not test live updates: {context}"
    );
    assert_eq!(
        result["errors"].as_array().map(Vec::len),
        Some(0),
        "{context}"
    );
    assert!(status.success(), "browser script failed: {context}");
    eprintln!(
        "dashboard showed the message after {} ms; screenshot {}",
        result["live"]["after_ms"],
        screenshot.display()
    );

    // Graceful shutdown on SIGTERM, with a stream open: the stream ends.
    let (status, _open_stream) = open_stream(&addr).await;
    assert_eq!(status, 200);
    let pid = serve.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = serve.child.try_wait() {
            assert!(
                status.success(),
                "tally serve exited {status}:\n{}",
                serve.log_text()
            );
            break;
        }
        assert!(Instant::now() < deadline, "tally serve ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `tally serve` beyond loopback: refused without `serve.token_file`; with one,
/// every request needs the token (header or `?token=`), and a short token file is
/// refused at start.
#[tokio::test]
async fn serve_requires_a_bearer_token_beyond_loopback() {
    let settings = tally_tests::isolated_settings("serve-auth", 1).await;
    let base = service_env(&settings, &[]);

    let mut refused = Serve::start_on("0.0.0.0:0", &base, 4);
    let status = wait_exit(&mut refused.child, Duration::from_secs(30));
    assert_eq!(
        status,
        Some(2),
        "no token beyond loopback:\n{}",
        refused.log_text()
    );
    assert!(
        refused.log_text().contains("serve.token_file"),
        "{}",
        refused.log_text()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let short = dir.path().join("short");
    std::fs::write(&short, "too-short\n").expect("write token");
    let mut env = base.clone();
    env.push(("TALLY__SERVE__TOKEN_FILE", short.display().to_string()));
    let mut rejected = Serve::start_on("127.0.0.1:0", &env, 4);
    let status = wait_exit(&mut rejected.child, Duration::from_secs(30));
    assert_eq!(status, Some(2), "short token:\n{}", rejected.log_text());

    let token = "0123456789abcdef-tally-test-token";
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).expect("write token");
    let mut env = base.clone();
    env.push(("TALLY__SERVE__TOKEN_FILE", file.display().to_string()));
    let mut serve = Serve::start_on("0.0.0.0:0", &env, 4);
    let port = serve
        .addr()
        .await
        .rsplit(':')
        .next()
        .map(str::to_owned)
        .expect("port");
    let addr = format!("127.0.0.1:{port}");
    for path in ["/", "/api/status", "/api/top?n=3"] {
        let (status, _) = http_get(&addr, path).await.expect("GET");
        assert_eq!(status, 401, "{path} without the token");
        let (status, _) = http_get_with(
            &addr,
            path,
            &[("Authorization", "Bearer wrong-token-0123456789")],
        )
        .await
        .expect("GET");
        assert_eq!(status, 401, "{path} with a wrong token");
        let bearer = format!("Bearer {token}");
        let (status, _) = http_get_with(&addr, path, &[("Authorization", &bearer)])
            .await
            .expect("GET");
        assert_eq!(
            status,
            200,
            "{path} with the token in the header:\n{}",
            serve.log_text()
        );
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, _) = http_get(&addr, &format!("{path}{sep}token={token}"))
            .await
            .expect("GET");
        assert_eq!(status, 200, "{path} with the token in the query");
    }
}

/// The exit code of `child` once it exits within `limit`; `None` if it did not.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
