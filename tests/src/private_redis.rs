//! Private Redis Clusters: a master with every slot, and optionally one replica of
//! it, made of `redis-server`s of a test's own, so restarting or pausing them
//! disturbs no other test (the stack's cluster is shared by every test).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tally_common::settings::RedisSettings;

use crate::free_port;

/// One `redis-server` in cluster mode, in a temporary folder of its own.
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    port: u16,
    /// The cluster bus port, chosen like `port`: Redis' default (`port` +
    /// 10000) lands in the kernel's ephemeral range, where any outgoing
    /// connection of a busy CI host may hold it ("Address already in use").
    bus_port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// A cluster of one: this node serves every slot, without replicas.
    pub async fn start() -> Self {
        let redis = Self::node().await;
        redis.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
        wait_for(&redis, "one-node cluster ok", |r| {
            r.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
        })
        .await;
        redis
    }

    /// A master with every slot and one replica of it, the replica's link up
    /// and in sync: (master, replica).
    pub async fn start_with_replica() -> (Self, Self) {
        let master = Self::start().await;
        let replica = Self::node().await;
        let master_id = master.cli(&["CLUSTER", "MYID"]).trim().to_owned();
        replica.cli(&[
            "CLUSTER",
            "MEET",
            "127.0.0.1",
            &master.port.to_string(),
            &master.bus_port.to_string(),
        ]);
        wait_for(&replica, "the replica knows the master", |r| {
            r.cli(&["CLUSTER", "NODES"]).contains(&master_id)
        })
        .await;
        // Asked again until it takes: a node just met may not yet list the
        // master's slots, and then refuses to replicate it.
        wait_for(&master, "the replica in sync", |m| {
            if !replica.cli(&["ROLE"]).starts_with("slave") {
                replica.cli(&["CLUSTER", "REPLICATE", &master_id]);
            }
            m.cli(&["INFO", "replication"]).contains("state=online")
        })
        .await;
        (master, replica)
    }

    /// A started node that knows no other and serves no slot yet.
    async fn node() -> Self {
        let mut redis = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            bus_port: free_port(),
            child: None,
        };
        redis.spawn().await;
        redis
    }

    /// Starts the server (again: nodes.conf in its folder keeps its slots).
    pub async fn spawn(&mut self) {
        let dir: &Path = self.dir.path();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args([
                "--cluster-enabled",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            // Alone, a node does not know its own address (CLUSTER SLOTS would
            // name it ""): no peer ever told it.
            .args(["--cluster-announce-ip", "127.0.0.1"])
            .arg("--cluster-config-file")
            .arg(dir.join("nodes.conf"))
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "redis-server on {} (bus {}) did not answer ({exited:?}); its log:\n{}",
                self.port,
                self.bus_port,
                std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `redis-cli` against this node; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server for good (until [`Self::spawn`]).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The node's client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends the server `SIG<name>` (`STOP`, `CONT`, …).
    pub fn signal(&self, name: &str) {
        let pid = self.pid();
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    /// Settings that reach the cluster through this node, without `WAIT`.
    pub fn settings(&self) -> RedisSettings {
        serde_json::from_value(serde_json::json!({
            "nodes": [format!("redis://127.0.0.1:{}", self.port)],
            "wait_replicas": 0,
        }))
        .expect("redis settings")
    }
}

async fn wait_for(redis: &PrivateRedis, what: &str, done: impl Fn(&PrivateRedis) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(redis) {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server would ignore nothing but SIGKILL; resume it anyway.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}
