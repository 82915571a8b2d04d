//! Reading the layers (defaults, one file, the environment) into [`Settings`],
//! collecting every problem before reporting any.

use std::path::{Path, PathBuf};

use super::*;

impl Settings {
    /// Loads settings from the process environment: the file is `path`, else
    /// `$TALLY_CONFIG`, else none; then `TALLY__SECTION__KEY` overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env_path = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let path = path.map(Path::to_path_buf).or(env_path);
        let env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__");
        Self::load_from(path.as_deref(), env)
    }

    /// Loads settings from an explicit file and environment source (tests pass a fixed
    /// environment map instead of the process's).
    pub fn load_from(path: Option<&Path>, env: config::Environment) -> Result<Self, ConfigError> {
        let mut file_layer = config::Config::builder();
        if let Some(path) = path {
            file_layer = file_layer.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let file_tree = file_layer
            .build()
            .and_then(|c| c.try_deserialize::<config::Map<String, config::Value>>())
            .map_err(|source| ConfigError::Source {
                path: path.map(Path::to_path_buf).unwrap_or_default(),
                source: Box::new(source),
            })?;
        let env_tree = config::Config::builder()
            .add_source(env)
            .build()
            .and_then(|c| c.try_deserialize::<config::Map<String, config::Value>>())
            .map_err(|e| ConfigError::Environment(Box::new(e)))?;
        Self::from_layers(file_tree, env_tree)
    }

    /// Settings from one TOML text alone (no file, no environment): what a
    /// configuration file with this text would give.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file_tree = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize::<config::Map<String, config::Value>>())
            .map_err(|source| ConfigError::Source {
                path: PathBuf::from("<text>"),
                source: Box::new(source),
            })?;
        Self::from_layers(file_tree, config::Map::new())
    }

    /// Merges the file and environment trees section by section and deserializes each
    /// section on its own, so that a problem in one does not hide problems in another.
    fn from_layers(
        file: config::Map<String, config::Value>,
        env: config::Map<String, config::Value>,
    ) -> Result<Self, ConfigError> {
        let mut issues = Vec::new();
        let mut root = file;
        for (section, value) in env {
            merge(&mut root, section, value);
        }
        let namespace = match root.remove(NAMESPACE) {
            None => String::new(),
            Some(value) => value.into_string().unwrap_or_else(|_| {
                issues.push(ConfigIssue {
                    key: NAMESPACE.into(),
                    problem: "must be a string".into(),
                });
                String::new()
            }),
        };
        for key in root.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                issues.push(ConfigIssue {
                    key: key.clone(),
                    problem: format!(
                        "unknown section (expected `{NAMESPACE}` or one of {})",
                        SECTIONS.join(", ")
                    ),
                });
            }
        }

        let redis = section::<RedisSettings>(&root, "redis", true, &mut issues);
        let kafka = section::<KafkaSettings>(&root, "kafka", true, &mut issues);
        let producer = section::<ProducerSettings>(&root, "producer", false, &mut issues);
        let counter = section::<CounterSettings>(&root, "counter", false, &mut issues);
        let aggregator = section::<AggregatorSettings>(&root, "aggregator", false, &mut issues);
        let client = section::<ClientSettings>(&root, "client", false, &mut issues);
        let serve = section::<ServeSettings>(&root, "serve", false, &mut issues);
        let log = section::<LogSettings>(&root, "log", false, &mut issues);

        match (
            redis, kafka, producer, counter, aggregator, client, serve, log,
        ) {
            (
                Some(redis),
                Some(kafka),
                Some(producer),
                Some(counter),
                Some(aggregator),
                Some(client),
                Some(serve),
                Some(log),
            ) if issues.is_empty() => {
                let mut settings = Settings {
                    namespace,
                    redis,
                    kafka,
                    producer,
                    counter,
                    aggregator,
                    client,
                    serve,
                    log,
                };
                // An invalid namespace is reported once, by `validate`, rather than
                // through every name derived from it.
                if namespace::is_valid(&settings.namespace) {
                    namespace::apply(&mut settings, |section, key| is_set(&root, section, key));
                }
                let problems = settings.validate();
                if problems.is_empty() {
                    Ok(settings)
                } else {
                    Err(ConfigError::Invalid(problems))
                }
            }
            _ => Err(ConfigError::Invalid(issues)),
        }
    }
}

/// The one top-level key that is not a section.
const NAMESPACE: &str = "namespace";

/// Whether the merged layers set `section.key` (a file or the environment named it).
fn is_set(root: &config::Map<String, config::Value>, section: &str, key: &str) -> bool {
    match root.get(section).map(|v| &v.kind) {
        Some(config::ValueKind::Table(table)) => table.contains_key(key),
        _ => false,
    }
}

/// Section names, in the order they appear in a file.
const SECTIONS: [&str; 8] = [
    "redis",
    "kafka",
    "producer",
    "counter",
    "aggregator",
    "client",
    "serve",
    "log",
];

/// Overlays `value` onto `root[key]`, recursing through tables so an environment
/// variable replaces one key, not its whole section.
fn merge(root: &mut config::Map<String, config::Value>, key: String, value: config::Value) {
    match (root.get_mut(&key), value.kind.clone()) {
        (Some(existing), config::ValueKind::Table(overlay)) => {
            if let config::ValueKind::Table(ref mut base) = existing.kind {
                for (k, v) in overlay {
                    merge(base, k, v);
                }
            } else {
                *existing = value;
            }
        }
        _ => {
            root.insert(key, value);
        }
    }
}

/// Deserializes `root[name]`, recording unknown keys and type or missing-field errors
/// with their full dotted path. Returns `None` when the section is unusable.
fn section<T: serde::de::DeserializeOwned>(
    root: &config::Map<String, config::Value>,
    name: &str,
    required: bool,
    issues: &mut Vec<ConfigIssue>,
) -> Option<T> {
    let value = match root.get(name) {
        Some(v) => v.clone(),
        None if required => {
            issues.push(ConfigIssue {
                key: name.into(),
                problem: "missing section".into(),
            });
            return None;
        }
        None => config::Value::new(None, config::ValueKind::Table(config::Map::new())),
    };
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let ignored = serde_ignored::Deserializer::new(value, &mut note_unknown);
    let result: Result<T, _> = serde_path_to_error::deserialize(ignored);
    for key in unknown {
        issues.push(ConfigIssue {
            key: format!("{name}.{key}"),
            problem: "unknown key".into(),
        });
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let (key, problem) = describe_serde_error(name, &path, &inner);
            issues.push(ConfigIssue { key, problem });
            None
        }
    }
}

/// Turns a serde message into (dotted key, problem): a missing field is reported
/// against the field itself, not against its section.
fn describe_serde_error(section: &str, path: &str, message: &str) -> (String, String) {
    let base = if path == "." || path.is_empty() {
        section.to_string()
    } else {
        format!("{section}.{path}")
    };
    // serde says "missing field `x`", the config crate "missing configuration field \"x\"".
    for (opening, closing) in [
        ("missing field `", '`'),
        ("missing configuration field \"", '"'),
    ] {
        if let Some(field) = message
            .strip_prefix(opening)
            .and_then(|r| r.split(closing).next())
        {
            // The config crate names the field by its path within the section
            // (`tls.key_file`), which `base` already holds up to the field.
            let field = field
                .strip_prefix(path)
                .and_then(|f| f.strip_prefix('.'))
                .unwrap_or(field);
            return (format!("{base}.{field}"), "required but not set".into());
        }
    }
    (base, message.to_string())
}
