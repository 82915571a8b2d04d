//! Values that parse but make no sense, all reported at once.

use super::*;

impl Settings {
    /// Checks values that parse but make no sense, all of them at once.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut check = |ok: bool, key: &str, problem: &str| {
            if !ok {
                issues.push(ConfigIssue {
                    key: key.into(),
                    problem: problem.into(),
                });
            }
        };
        check(
            namespace::is_valid(&self.namespace),
            "namespace",
            "must be empty or 1-64 characters of [A-Za-z0-9._-] (it names Kafka topics, \
             consumer groups and transactional ids, and prefixes Redis keys)",
        );
        check(
            !self.redis.nodes.is_empty(),
            "redis.nodes",
            "needs at least one node",
        );
        for node in &self.redis.nodes {
            check(
                node.starts_with("redis://") || node.starts_with("rediss://"),
                "redis.nodes",
                &format!(
                    "`{}` is not a redis:// or rediss:// URL",
                    super::redact::redact_url(node)
                ),
            );
        }
        let all_tls = self.redis.nodes.iter().all(|n| n.starts_with("rediss://"));
        check(
            self.redis.tls_ca_file.is_none() || all_tls,
            "redis.tls_ca_file",
            "is set, but not every node is a rediss:// URL (TLS)",
        );
        let url_credentials = self.redis.nodes.iter().any(|n| {
            n.split_once("://")
                .and_then(|(_, rest)| rest.split('/').next())
                .is_some_and(|authority| authority.contains('@'))
        });
        check(
            !(url_credentials
                && (self.redis.username.is_some() || self.redis.password_file.is_some())),
            "redis.username",
            "credentials are in the node URLs and in redis.username / redis.password_file: \
             give them in one place",
        );
        check(
            self.redis.username.as_deref() != Some(""),
            "redis.username",
            "is empty (leave it unset for the default user)",
        );
        check(
            crate::keys::is_valid_prefix(&self.redis.prefix),
            "redis.prefix",
            "must be 1-64 characters of [A-Za-z0-9._-]",
        );
        check(
            self.redis.response_timeout_ms > self.redis.wait_timeout_ms,
            "redis.response_timeout_ms",
            "must be greater than redis.wait_timeout_ms",
        );
        check(
            self.kafka.security_protocol.as_deref().is_none_or(|p| {
                ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
                    .contains(&p.to_ascii_lowercase().as_str())
            }),
            "kafka.security_protocol",
            "must be one of plaintext, ssl, sasl_plaintext, sasl_ssl",
        );
        check(
            self.kafka
                .sasl_mechanism
                .as_deref()
                .is_none_or(|m| ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"].contains(&m)),
            "kafka.sasl_mechanism",
            "must be one of SCRAM-SHA-512, SCRAM-SHA-256, PLAIN",
        );
        check(
            self.kafka.sasl_username.is_some() || self.kafka.sasl_password_file.is_none(),
            "kafka.sasl_password_file",
            "is set without kafka.sasl_username",
        );
        check(
            !self.kafka.brokers.trim().is_empty(),
            "kafka.brokers",
            "must name at least one broker",
        );
        for (key, topic) in [
            (
                "kafka.client_message_topic",
                &self.kafka.client_message_topic,
            ),
            (
                "kafka.message_aggregation_topic",
                &self.kafka.message_aggregation_topic,
            ),
            ("kafka.dlq_topic", &self.kafka.dlq_topic),
        ] {
            check(
                is_valid_topic(topic),
                key,
                "must be 1-249 characters of [A-Za-z0-9._-]",
            );
        }
        check(
            self.kafka.partitions >= 1,
            "kafka.partitions",
            "must be ≥ 1",
        );
        check(
            self.kafka.replication_factor >= 1,
            "kafka.replication_factor",
            "must be ≥ 1",
        );
        check(
            (1..=self.kafka.replication_factor).contains(&self.kafka.min_insync_replicas),
            "kafka.min_insync_replicas",
            "must be between 1 and kafka.replication_factor",
        );
        check(
            ["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.kafka.compression.as_str()),
            "kafka.compression",
            "must be one of none, gzip, snappy, lz4, zstd",
        );
        check(
            self.kafka.delivery_timeout_ms > 0,
            "kafka.delivery_timeout_ms",
            "must be > 0",
        );
        check(
            self.kafka.transaction_timeout_ms > 0,
            "kafka.transaction_timeout_ms",
            "must be > 0",
        );
        check(
            self.producer.listen.parse::<std::net::SocketAddr>().is_ok(),
            "producer.listen",
            "must be an ip:port address",
        );
        for (key, addr) in [
            ("producer.observe_listen", &self.producer.observe_listen),
            ("counter.observe_listen", &self.counter.observe_listen),
            ("aggregator.observe_listen", &self.aggregator.observe_listen),
        ] {
            check(
                addr.parse::<std::net::SocketAddr>().is_ok(),
                key,
                "must be an ip:port address (port 0: any free port)",
            );
        }
        check(
            self.producer.max_line_bytes >= 1,
            "producer.max_line_bytes",
            "must be ≥ 1",
        );
        let p = &self.producer;
        check(
            p.max_connections >= 1,
            "producer.max_connections",
            "must be ≥ 1",
        );
        check(
            p.auth.mode != AuthMode::Token || p.auth.secret_file.is_some(),
            "producer.auth.secret_file",
            "required when producer.auth.mode = \"token\"",
        );
        check(
            p.auth.mode != AuthMode::Mtls
                || p.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
            "producer.tls.client_ca_file",
            "required when producer.auth.mode = \"mtls\" (with [producer.tls] cert_file and key_file)",
        );
        if let Some(tls) = &p.tls {
            for (key, path) in [
                ("producer.tls.cert_file", Some(&tls.cert_file)),
                ("producer.tls.key_file", Some(&tls.key_file)),
                ("producer.tls.client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(path) = path {
                    check(!path.as_os_str().is_empty(), key, "must name a PEM file");
                }
            }
        }
        check(
            p.first_line_timeout_ms >= 1,
            "producer.first_line_timeout_ms",
            "must be ≥ 1",
        );
        check(
            p.batch_max_lines >= 1,
            "producer.batch_max_lines",
            "must be ≥ 1",
        );
        check(
            p.batch_max_bytes >= p.max_line_bytes,
            "producer.batch_max_bytes",
            "must be ≥ producer.max_line_bytes (a batch holds at least one line)",
        );
        check(
            p.client_backlog_messages >= p.batch_max_lines as u64,
            "producer.client_backlog_messages",
            "must be ≥ producer.batch_max_lines",
        );
        check(
            p.client_backlog_bytes >= p.batch_max_bytes,
            "producer.client_backlog_bytes",
            "must be ≥ producer.batch_max_bytes",
        );
        check(
            p.global_backlog_bytes >= p.client_backlog_bytes,
            "producer.global_backlog_bytes",
            "must be ≥ producer.client_backlog_bytes",
        );
        for (key, ms) in [
            ("producer.idle_timeout_ms", p.idle_timeout_ms),
            ("producer.heartbeat_interval_ms", p.heartbeat_interval_ms),
            (
                "producer.flush_commit_interval_ms",
                p.flush_commit_interval_ms,
            ),
        ] {
            check(ms > 0, key, "must be > 0");
        }
        for (key, records) in [
            ("counter.batch_max_records", self.counter.batch_max_records),
            (
                "aggregator.batch_max_records",
                self.aggregator.batch_max_records,
            ),
            ("counter.batch_max_bytes", self.counter.batch_max_bytes),
            (
                "aggregator.batch_max_bytes",
                self.aggregator.batch_max_bytes,
            ),
        ] {
            check(records >= 1, key, "must be ≥ 1");
        }
        for (key, n) in [
            ("counter.apply_concurrency", self.counter.apply_concurrency),
            (
                "aggregator.apply_concurrency",
                self.aggregator.apply_concurrency,
            ),
        ] {
            check(n >= 1, key, "must be ≥ 1");
        }
        for (key, ms) in [
            ("counter.batch_max_ms", self.counter.batch_max_ms),
            ("counter.stall_after_ms", self.counter.stall_after_ms),
            ("aggregator.batch_max_ms", self.aggregator.batch_max_ms),
        ] {
            check(ms > 0, key, "must be > 0");
        }
        for (key, name) in [
            ("counter.group_id", &self.counter.group_id),
            (
                "counter.transactional_id_prefix",
                &self.counter.transactional_id_prefix,
            ),
            ("aggregator.group_id", &self.aggregator.group_id),
        ] {
            check(!name.trim().is_empty(), key, "must not be empty");
        }
        for (key, id) in [
            ("producer.instance_id", &self.producer.instance_id),
            ("counter.instance_id", &self.counter.instance_id),
        ] {
            if let Some(id) = id {
                check(
                    crate::keys::ClientId::parse(id).is_ok(),
                    key,
                    "must be 1-64 characters of [A-Za-z0-9._:-]",
                );
            }
        }
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_ok(),
            "log.filter",
            "is not a valid tracing filter",
        );
        issues
    }
}

fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
