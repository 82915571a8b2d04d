//! Observe ports default to "any free port", and every instance publishes the
//! address it got: two producers, two counters and two aggregators started with
//! the default `observe_listen` on one host all come up, and `tally status --json`
//! lists each of them with a `/metrics` URL that answers with that service's
//! metrics. A stopped instance leaves the list (its entry is withdrawn).

use std::process::Command;
use std::time::{Duration, Instant};

use tally_tests::pipeline::{isolated, service_env, start_aggregator, start_counter};
use tally_tests::{
    binary, free_port, http_get, local_config, metric_sample, unique, wait_listening,
    ServiceProcess,
};

/// `tally status --json` against `settings`' pipeline, parsed.
fn status_json(settings: &tally_common::Settings) -> serde_json::Value {
    let mut cmd = Command::new(binary("tally"));
    cmd.arg("--config")
        .arg(local_config())
        .args(["status", "--json"]);
    for (k, v) in settings.pipeline_env() {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tally status");
    assert!(
        out.status.success(),
        "tally status: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// (role, instance, metrics URL) of every listed instance.
fn instances(status: &serde_json::Value) -> Vec<(String, String, String)> {
    status["instances"]
        .as_array()
        .expect("instances array")
        .iter()
        .map(|i| {
            let field = |name: &str| i[name].as_str().unwrap_or_default().to_owned();
            (field("role"), field("instance"), field("metrics"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_with_default_observe_ports_are_listed_with_working_metrics() {
    let settings = isolated("it-instances", 3).await;
    let mut services: Vec<(&str, ServiceProcess)> = Vec::new();
    let mut producer_ids = Vec::new();
    for _ in 0..2 {
        // The line-protocol port is fixed by default; /metrics is left to the default.
        let id = unique("p-inst");
        let mut env = service_env(&settings, &[]);
        env.push((
            "TALLY__PRODUCER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ));
        env.push(("TALLY__PRODUCER__INSTANCE_ID", id.clone()));
        producer_ids.push(id);
        services.push(("producer", ServiceProcess::start("tally-producer", &env)));
    }
    for i in 0..2 {
        services.push((
            "counter",
            start_counter(&settings, &format!("inst{i}"), &[]),
        ));
        services.push(("aggregator", start_aggregator(&settings, &[])));
    }

    // All six come up, each on a port of its own, and all six are listed.
    let deadline = Instant::now() + Duration::from_secs(90);
    let listed = loop {
        for (name, process) in &mut services {
            if let Err(e) = process.running() {
                panic!("{name} exited: {e}\n{}", process.log_tail());
            }
        }
        let listed = instances(&status_json(&settings));
        if listed.len() >= services.len() || Instant::now() >= deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let logs = || {
        services
            .iter()
            .map(|(name, p)| format!("--- {name}\n{}", p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(listed.len(), 6, "{listed:?}\n{}", logs());
    for role in ["producer", "counter", "aggregator"] {
        assert_eq!(
            listed.iter().filter(|(r, _, _)| r == role).count(),
            2,
            "{role}: {listed:?}"
        );
    }
    for id in &producer_ids {
        assert!(
            listed.iter().any(|(r, i, _)| r == "producer" && i == id),
            "producer {id} not listed under its instance id: {listed:?}"
        );
    }
    for id in ["inst0", "inst1"] {
        assert!(
            listed.iter().any(|(r, i, _)| r == "counter" && i == id),
            "counter {id}: {listed:?}"
        );
    }
    let mut addrs = Vec::new();
    for (role, instance, url) in &listed {
        let addr = url
            .strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("{role} {instance}: not a /metrics URL: {url}"));
        assert!(addr.starts_with("127.0.0.1:"), "loopback by default: {url}");
        assert!(
            !addr.ends_with(":0"),
            "the bound port, not the configured 0: {url}"
        );
        wait_listening(addr, Duration::from_secs(10)).await;
        let (code, page) = http_get(addr, "/metrics").await.expect("scrape");
        assert_eq!(code, 200, "{url}: {page}");
        assert!(
            metric_sample(&page, "tally_ready", &[("service", role)]).is_some(),
            "{url} is not the {role}'s endpoint:\n{page}"
        );
        addrs.push(addr.to_owned());
    }
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 6, "each instance its own port: {addrs:?}");

    // A stopped instance withdraws its entry.
    let (_, mut counter) = services.remove(2);
    counter.signal("TERM");
    assert!(
        counter.wait_exit(Duration::from_secs(30)).is_some(),
        "counter did not stop\n{}",
        counter.log_tail()
    );
    let listed = instances(&status_json(&settings));
    assert!(
        !listed
            .iter()
            .any(|(r, i, _)| r == "counter" && i == "inst0"),
        "a stopped counter is still listed: {listed:?}"
    );
    assert_eq!(listed.len(), 5, "{listed:?}");
}
