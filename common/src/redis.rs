//! Redis Cluster access: the connection builder and [`ReplicatedScript`], the one
//! way tally writes.
//!
//! Invariant: a write is reported durable only after `WAIT` confirmed that it reached
//! the configured number of replicas. The script and its `WAIT` go to the slot's
//! master as one pipeline on one connection, because `WAIT` only covers writes made
//! earlier on the connection that sends it.
//!
//! The cluster client resends a command when a connection drops (redis-rs retries
//! IO errors by reconnecting), so a script may run twice. Every tally script must
//! therefore be safe to re-run: guarded by sequence numbers, epochs or
//! compare-and-set on the state it expects, never a blind increment.

use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    FromRedisValue, IntoConnectionInfo, RedisError, ServerError, TlsCertificates, ToRedisArgs,
    Value,
};

use crate::schema::refusal;
use crate::settings::RedisSettings;

/// A Redis operation that did not complete as asked.
#[derive(Debug, thiserror::Error)]
pub enum RedisOpError {
    /// The cluster or connection failed; whether the write happened is unknown.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// A stash script refused because the caller is no longer the client's owner
    /// at its epoch (`TALLY_FENCED`): another claim came since. Nothing was written.
    #[error("fenced: {detail}")]
    Fenced {
        /// The script's message (who owns the client at which epoch).
        detail: String,
    },
    /// A tally script refused on purpose for another reason (its code starts with
    /// `TALLY_`, see [`crate::schema::refusal`]); nothing was written.
    #[error("script refused: {code} {detail}")]
    Refused {
        /// The script's code, e.g. `TALLY_FENCED`.
        code: String,
        /// The rest of its message.
        detail: String,
    },
    /// The script ran on the master but `WAIT` saw too few replicas acknowledge it:
    /// the write may still be lost in a failover, so it must not be reported durable.
    #[error("write reached {acked} of {wanted} replica(s) within {timeout_ms} ms")]
    NotReplicated {
        /// Replicas that acknowledged.
        acked: u32,
        /// Replicas required.
        wanted: u32,
        /// How long `WAIT` waited.
        timeout_ms: u64,
    },
    /// The script answered with a value of another type than the caller expects.
    #[error("unexpected script result: {0}")]
    Result(String),
}

/// Opens a cluster connection with the configured timeouts, retries, credentials
/// and TLS roots.
pub async fn connect(settings: &RedisSettings) -> Result<ClusterConnection, RedisError> {
    let access = NodeAccess::read(settings)?;
    let mut builder = ClusterClientBuilder::new(settings.nodes.clone())
        .connection_timeout(settings.connect_timeout())
        .response_timeout(settings.response_timeout())
        .retries(settings.retries);
    if let Some(user) = &access.username {
        builder = builder.username(user);
    }
    if let Some(password) = &access.password {
        builder = builder.password(password);
    }
    if let Some(certs) = &access.certs {
        builder = builder.certs(certs.clone());
    }
    *NODE_ACCESS.write().unwrap_or_else(|e| e.into_inner()) = Some(access);
    builder.build()?.get_async_connection().await
}

/// A node's `(host, port)`.
pub type Node = (String, u16);

/// How a connection reaches and authenticates to any node of the cluster: the
/// configured nodes' scheme and user info, or `[redis]`'s `username`,
/// `password_file` and `tls_ca_file`.
#[derive(Clone, Default)]
struct NodeAccess {
    /// `redis://` or `rediss://` with the seed URL's user info (`user:pass@`), if any.
    url_prefix: String,
    username: Option<String>,
    password: Option<String>,
    certs: Option<TlsCertificates>,
    /// `connect_timeout_ms` and `response_timeout_ms`; unset, redis-rs' own
    /// (a 500 ms response timeout, which cut a round's `WAIT` off long before
    /// `wait_timeout_ms`).
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
}

impl NodeAccess {
    /// Reads the password and CA files named in `settings`.
    fn read(settings: &RedisSettings) -> Result<Self, RedisError> {
        let unreadable = |what: &'static str, path: &std::path::Path, e: std::io::Error| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                what,
                format!("{}: {e}", path.display()),
            ))
        };
        let password = match &settings.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| unreadable("cannot read redis.password_file", path, e))?;
                Some(text.lines().next().unwrap_or_default().to_owned())
            }
            None => None,
        };
        let certs = match &settings.tls_ca_file {
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(
                    std::fs::read(path)
                        .map_err(|e| unreadable("cannot read redis.tls_ca_file", path, e))?,
                ),
            }),
            None => None,
        };
        Ok(Self {
            url_prefix: url_prefix(settings.nodes.first().map(String::as_str).unwrap_or("")),
            username: settings.username.clone(),
            password,
            certs,
            connect_timeout: Some(settings.connect_timeout()),
            response_timeout: Some(settings.response_timeout()),
        })
    }
}

/// Reads the files `[redis]` names (`password_file`, `tls_ca_file`), as [`connect`]
/// will: what `tally config check` asks.
pub fn read_access_files(settings: &RedisSettings) -> Result<(), RedisError> {
    NodeAccess::read(settings).map(|_| ())
}

/// How [`connect_node`] reaches nodes: set by the last [`connect`].
static NODE_ACCESS: std::sync::RwLock<Option<NodeAccess>> = std::sync::RwLock::new(None);

/// `scheme://[userinfo@]host:port[/db]` → `scheme://[userinfo@]` (`redis://` when
/// the URL has no scheme).
fn url_prefix(seed: &str) -> String {
    let Some((scheme, rest)) = seed.split_once("://") else {
        return "redis://".to_owned();
    };
    let userinfo = rest
        .split('/')
        .next()
        .and_then(|authority| authority.rsplit_once('@'))
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}")
}

/// Opens a plain (non-cluster) connection to one node, with the scheme,
/// credentials and TLS roots of the nodes the last [`connect`] was given.
pub async fn connect_node(node: &Node) -> Result<redis::aio::MultiplexedConnection, RedisError> {
    let access = NODE_ACCESS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| NodeAccess {
            url_prefix: "redis://".to_owned(),
            ..NodeAccess::default()
        });
    open_node(&access, node).await
}

/// Opens a plain (non-cluster) connection to the first configured node (for
/// cluster-wide questions such as `CLUSTER NODES`).
pub async fn connect_seed(
    settings: &RedisSettings,
) -> Result<redis::aio::MultiplexedConnection, RedisError> {
    let access = NodeAccess::read(settings)?;
    let seed = settings.nodes.first().map(String::as_str).unwrap_or("");
    let info = seed.into_connection_info()?;
    let node = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        _ => {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "redis.nodes",
                format!(
                    "{} is not a TCP node",
                    crate::settings::redact::redact_url(seed)
                ),
            )))
        }
    };
    open_node(&access, &node).await
}

async fn open_node(
    access: &NodeAccess,
    (host, port): &Node,
) -> Result<redis::aio::MultiplexedConnection, RedisError> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let mut info = format!("{}{host}:{port}", access.url_prefix).into_connection_info()?;
    let mut redis_info = info.redis_settings().clone();
    if let Some(user) = &access.username {
        redis_info = redis_info.set_username(user);
    }
    if let Some(password) = &access.password {
        redis_info = redis_info.set_password(password);
    }
    info = info.set_redis_settings(redis_info);
    let client = match &access.certs {
        Some(certs) => redis::Client::build_with_tls(info, certs.clone())?,
        None => redis::Client::open(info)?,
    };
    let mut config = redis::AsyncConnectionConfig::new();
    if let Some(timeout) = access.connect_timeout {
        config = config.set_connection_timeout(Some(timeout));
    }
    if let Some(timeout) = access.response_timeout {
        config = config.set_response_timeout(Some(timeout));
    }
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Which master serves which slots: `(first, last, master)`, sorted, from
/// `CLUSTER SLOTS` asked of any node.
pub async fn cluster_slots(
    conn: &mut ClusterConnection,
) -> Result<Vec<(u16, u16, Node)>, RedisOpError> {
    let reply: Value = conn
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    parse_cluster_slots(&reply)
        .ok_or_else(|| RedisOpError::Result(format!("unexpected CLUSTER SLOTS reply {reply:?}")))
}

/// The current masters, each once.
pub async fn masters(conn: &mut ClusterConnection) -> Result<Vec<Node>, RedisOpError> {
    let mut nodes: Vec<Node> = cluster_slots(conn)
        .await?
        .into_iter()
        .map(|(_, _, node)| node)
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}

/// Routes a command to one node by address.
pub fn to_node((host, port): &Node) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: host.clone(),
        port: *port,
    })
}

/// Parses `CLUSTER SLOTS`: `[[first, last, [host, port, id], replicas…], …]`.
fn parse_cluster_slots(reply: &Value) -> Option<Vec<(u16, u16, Node)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut table = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let first = u16::from_redis_value_ref(fields.first()?).ok()?;
        let last = u16::from_redis_value_ref(fields.get(1)?).ok()?;
        let Value::Array(master) = fields.get(2)? else {
            return None;
        };
        let host = String::from_redis_value_ref(master.first()?).ok()?;
        let port = u16::from_redis_value_ref(master.get(1)?).ok()?;
        table.push((first, last, (host, port)));
    }
    table.sort();
    Some(table)
}

/// How many replicas must confirm a write, and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Replicas that must acknowledge; 0 skips `WAIT`.
    pub replicas: u32,
    /// Longest `WAIT` blocks.
    pub timeout: Duration,
}

impl Replication {
    /// The policy the settings ask for.
    pub fn from_settings(settings: &RedisSettings) -> Self {
        Self {
            replicas: settings.wait_replicas,
            timeout: Duration::from_millis(settings.wait_timeout_ms),
        }
    }
}

/// A Lua script that runs on the master of its first key's slot and is confirmed
/// replicated before its result is returned.
#[derive(Debug, Clone)]
pub struct ReplicatedScript {
    script: redis::Script,
    body: &'static str,
}

impl ReplicatedScript {
    /// Wraps a script body. All keys a call passes must share one hash tag.
    pub fn new(body: &'static str) -> Self {
        Self {
            script: redis::Script::new(body),
            body,
        }
    }

    /// The script's source.
    pub fn body(&self) -> &'static str {
        self.body
    }

    /// SHA1 of the body, as `EVALSHA` names it.
    pub fn sha(&self) -> &str {
        self.script.get_hash()
    }

    /// Runs the script (`EVALSHA`, loading it first on a node that lacks it) and
    /// `WAIT`s for `replication`, in one pipeline on the slot master's connection.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        conn: &mut ClusterConnection,
        call: &ScriptCall,
        replication: Replication,
    ) -> Result<T, RedisOpError> {
        let first = call.keys.first().ok_or_else(|| {
            RedisOpError::Result("a replicated script needs at least one key".into())
        })?;
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(first, SlotAddr::Master));

        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(self.sha())
            .arg(call.keys.len())
            .arg(&call.keys)
            .arg(&call.args);
        let with_wait = replication.replicas > 0;
        if with_wait {
            pipe.cmd("WAIT")
                .arg(replication.replicas)
                .arg(replication.timeout.as_millis() as u64);
        }
        let count = if with_wait { 2 } else { 1 };

        let mut outcome = run_pipeline(conn, &pipe, count, &route).await?;
        if matches!(&outcome.0, Value::ServerError(e) if e.code() == "NOSCRIPT") {
            // Not cached on this node (new node, restart, failover): nothing ran.
            let load = redis::cmd("SCRIPT").arg("LOAD").arg(self.body).clone();
            conn.route_command(load, RoutingInfo::SingleNode(route.clone()))
                .await?;
            outcome = run_pipeline(conn, &pipe, count, &route).await?;
        }
        let (result, acked) = outcome;
        if let Value::ServerError(e) = result {
            return Err(classify(e));
        }
        if with_wait {
            let acked: u32 = match acked {
                Some(v) => FromRedisValue::from_redis_value(v)
                    .map_err(|e| RedisOpError::Result(e.to_string()))?,
                None => 0,
            };
            if acked < replication.replicas {
                return Err(RedisOpError::NotReplicated {
                    acked,
                    wanted: replication.replicas,
                    timeout_ms: replication.timeout.as_millis() as u64,
                });
            }
        }
        T::from_redis_value(result).map_err(|e| RedisOpError::Result(e.to_string()))
    }
}

/// Keys and arguments of one script call.
#[derive(Debug, Clone, Default)]
pub struct ScriptCall {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall {
    /// A call with no keys or arguments yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key (`KEYS[n]`); all keys of a call must share one hash tag.
    pub fn key(&mut self, key: impl Into<String>) -> &mut Self {
        self.keys.push(key.into());
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// The first key, which decides the slot.
    pub fn first_key(&self) -> Option<&str> {
        self.keys.first().map(String::as_str)
    }

    /// All keys.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// All arguments, encoded.
    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }
}

/// Sends the pipeline to its node; returns the script's reply and `WAIT`'s, if sent.
/// A server error of one command comes back as a `Value::ServerError`, not as `Err`.
async fn run_pipeline(
    conn: &mut ClusterConnection,
    pipe: &redis::Pipeline,
    count: usize,
    route: &SingleNodeRoutingInfo,
) -> Result<(Value, Option<Value>), RedisOpError> {
    let mut values = conn
        .route_pipeline(pipe.clone(), 0, count, route.clone())
        .await?
        .into_iter();
    let result = values
        .next()
        .ok_or_else(|| RedisOpError::Result("pipeline returned no result".into()))?;
    Ok((result, values.next()))
}

/// Separates a tally script's deliberate refusal from a Redis failure: the one
/// place a script's error code is read (every reply of a tally script passes here).
pub(crate) fn classify(e: ServerError) -> RedisOpError {
    let detail = || e.details().unwrap_or_default().to_owned();
    match e.code() {
        refusal::FENCED => RedisOpError::Fenced { detail: detail() },
        code if code.starts_with(refusal::PREFIX) => RedisOpError::Refused {
            code: code.to_owned(),
            detail: detail(),
        },
        _ => RedisOpError::Redis(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    /// A server error as it comes off the wire.
    fn server_error(reply: &str) -> ServerError {
        match redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()) {
            Ok(Value::ServerError(e)) => e,
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn refusals_are_classified_by_their_marker() {
        match classify(server_error("TALLY_FENCED owner is p-2 at epoch 7")) {
            RedisOpError::Fenced { detail } => assert_eq!(detail, "owner is p-2 at epoch 7"),
            other => panic!("expected Fenced, got {other:?}"),
        }
        match classify(server_error(
            "TALLY_SN_MISMATCH stored sn 3, caller expected 2",
        )) {
            RedisOpError::Refused { code, detail } => {
                assert_eq!(code, refusal::SN_MISMATCH);
                assert_eq!(detail, "stored sn 3, caller expected 2");
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        assert!(matches!(
            classify(server_error("ERR something else")),
            RedisOpError::Redis(_)
        ));
    }
}
