//! A stored Infisical export written out in the form a restore asks for
//! (`pitr restore --snapshot NAME --format json|dotenv|yaml
//! [--environment ENV]`, docs/SNAPSHOTS.md).
//!
//! `json` is the stored canonical export (one environment of it with
//! `--environment`): everything, comments, tags and imports included.
//! `dotenv` and `yaml` hold one environment's keys and values only, the
//! form the `infisical` CLI and most programs load; they refuse what they
//! cannot say faithfully (two folders with the same key, a key a dotenv
//! line cannot carry) instead of dropping a secret.

use super::{Import, Secret, Snapshot};

/// The form of a restored Infisical snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The canonical export pitr stores (every field).
    Json,
    /// `KEY='value'` lines of one environment.
    Dotenv,
    /// A YAML mapping of one environment's keys to values.
    Yaml,
}

/// Why a snapshot cannot be written in the form asked for.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The stored bytes are not an Infisical export.
    #[error(
        "the snapshot is not an Infisical export pitr can read ({0}); write it out as stored \
         with --format json and no --environment"
    )]
    Unreadable(serde_json::Error),
    /// The environment asked for was not exported.
    #[error("the snapshot holds no environment {asked:?} (it holds: {held})")]
    NoSuchEnvironment {
        /// What `--environment` said.
        asked: String,
        /// The environments it holds.
        held: String,
    },
    /// dotenv and YAML hold one environment; the snapshot has several.
    #[error(
        "--format {format} writes one environment and the snapshot holds {held}: add \
         --environment ENV"
    )]
    WhichEnvironment {
        /// The format asked for.
        format: &'static str,
        /// The environments it holds.
        held: String,
    },
    /// Two folders hold the same key: a flat form would keep one silently.
    #[error(
        "key {key:?} is in several folders ({paths}) of environment {environment:?}: --format \
         {format} would keep only one; use --format json, which keeps the folders"
    )]
    DuplicateKey {
        /// The format asked for.
        format: &'static str,
        /// The environment.
        environment: String,
        /// The key.
        key: String,
        /// Its folders.
        paths: String,
    },
    /// A key a dotenv line cannot carry.
    #[error(
        "key {key:?} cannot be written as a dotenv line (only letters, digits, `_`, `-` and \
         `.`); use --format json or yaml"
    )]
    BadKey {
        /// The key.
        key: String,
    },
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "json" => Ok(Format::Json),
            "dotenv" => Ok(Format::Dotenv),
            "yaml" => Ok(Format::Yaml),
            other => Err(format!("unknown format {other:?}: json, dotenv or yaml")),
        }
    }
}

impl Format {
    /// Every format's name, for the command line.
    pub const NAMES: [&'static str; 3] = ["json", "dotenv", "yaml"];

    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Dotenv => "dotenv",
            Format::Yaml => "yaml",
        }
    }
}

/// Writes the stored export `stored` as `format`, restricted to
/// `environment` when one is given. Never logs a value.
pub fn render(
    stored: &[u8],
    format: Format,
    environment: Option<&str>,
) -> Result<Vec<u8>, RenderError> {
    if format == Format::Json && environment.is_none() {
        // As stored: byte-equal to what was exported.
        return Ok(stored.to_vec());
    }
    let snapshot = Snapshot::from_json(stored).map_err(RenderError::Unreadable)?;
    let held = || snapshot.environments.join(", ");
    let env = match (environment, snapshot.environments.as_slice()) {
        (Some(e), all) if all.iter().any(|h| h == e) => e.to_owned(),
        (Some(e), _) => {
            return Err(RenderError::NoSuchEnvironment {
                asked: e.to_owned(),
                held: held(),
            });
        }
        (None, [only]) => only.clone(),
        (None, _) => {
            return Err(RenderError::WhichEnvironment {
                format: format.as_str(),
                held: held(),
            });
        }
    };
    let secrets: Vec<&Secret> = snapshot
        .secrets
        .iter()
        .filter(|s| s.environment == env)
        .collect();
    let imports: Vec<&Import> = snapshot
        .imports
        .iter()
        .filter(|i| i.environment == env)
        .collect();
    match format {
        Format::Json => {
            let mut one = Snapshot::new(&snapshot.project_id, &snapshot.secret_path, &[env]);
            one.secrets = secrets.into_iter().cloned().collect();
            one.imports = imports.into_iter().cloned().collect();
            Ok(one.canonical().to_json())
        }
        Format::Dotenv | Format::Yaml => {
            no_duplicate_keys(format, &env, &secrets)?;
            let mut out = String::new();
            out.push_str(&format!(
                "# Infisical project {}, environment {env}, folder {} and beneath (pitr)\n",
                snapshot.project_id, snapshot.secret_path
            ));
            for i in &imports {
                out.push_str(&format!(
                    "# imports {} {} (a reference: its values are not in this file)\n",
                    i.from_environment, i.from_path
                ));
            }
            for s in &secrets {
                out.push_str(&line(format, s)?);
                out.push('\n');
            }
            Ok(out.into_bytes())
        }
    }
}

/// Refuses a key that stands in two folders of one environment.
fn no_duplicate_keys(
    format: Format,
    environment: &str,
    secrets: &[&Secret],
) -> Result<(), RenderError> {
    let mut by_key: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for s in secrets {
        by_key.entry(&s.key).or_default().push(&s.path);
    }
    match by_key.into_iter().find(|(_, paths)| paths.len() > 1) {
        Some((key, paths)) => Err(RenderError::DuplicateKey {
            format: format.as_str(),
            environment: environment.to_owned(),
            key: key.to_owned(),
            paths: paths.join(", "),
        }),
        None => Ok(()),
    }
}

/// One secret as a dotenv or YAML line.
fn line(format: Format, s: &Secret) -> Result<String, RenderError> {
    // JSON's string quoting is also YAML's double-quoted scalar, and
    // escapes every control character.
    let quoted = |t: &str| serde_json::Value::String(t.to_owned()).to_string();
    match format {
        Format::Yaml => Ok(format!("{}: {}", quoted(&s.key), quoted(&s.value))),
        _ => {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
            if s.key.is_empty() || !s.key.chars().all(ok) {
                return Err(RenderError::BadKey { key: s.key.clone() });
            }
            // Single quotes take the value literally; a value holding one,
            // or a line break, is double-quoted with escapes instead.
            if s.value.contains(['\'', '\n', '\r']) {
                Ok(format!("{}={}", s.key, quoted(&s.value)))
            } else {
                Ok(format!("{}='{}'", s.key, s.value))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(env: &str, path: &str, key: &str, value: &str) -> Secret {
        Secret {
            environment: env.to_owned(),
            path: path.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
            comment: "c".to_owned(),
            tags: vec!["t".to_owned()],
        }
    }

    fn stored(secrets: Vec<Secret>) -> Vec<u8> {
        let mut s = Snapshot::new("p1", "/", &["dev".to_owned(), "prod".to_owned()]);
        s.secrets = secrets;
        s.imports = vec![Import {
            environment: "prod".into(),
            from_environment: "shared".into(),
            from_path: "/common".into(),
        }];
        s.canonical().to_json()
    }

    #[test]
    fn json_without_environment_is_the_stored_bytes() {
        let bytes = stored(vec![secret("dev", "/", "A", "1")]);
        assert_eq!(render(&bytes, Format::Json, None).unwrap(), bytes);
    }

    #[test]
    fn json_with_environment_keeps_only_that_one() {
        let bytes = stored(vec![
            secret("dev", "/", "A", "1"),
            secret("prod", "/db", "B", "2"),
        ]);
        let out = render(&bytes, Format::Json, Some("prod")).unwrap();
        let one = Snapshot::from_json(&out).unwrap();
        assert_eq!(one.environments, ["prod"]);
        assert_eq!(one.secrets.len(), 1);
        assert_eq!(one.secrets[0].key, "B");
        assert_eq!(one.imports.len(), 1);
    }

    #[test]
    fn dotenv_and_yaml_quote_values_and_name_imports() {
        let bytes = stored(vec![
            secret("prod", "/", "PLAIN", "a b$c"),
            secret("prod", "/db", "QUOTE", "it's\nx"),
            secret("dev", "/", "OTHER", "no"),
        ]);
        let env = String::from_utf8(render(&bytes, Format::Dotenv, Some("prod")).unwrap()).unwrap();
        assert!(env.contains("PLAIN='a b$c'\n"), "{env}");
        assert!(env.contains("QUOTE=\"it's\\nx\"\n"), "{env}");
        assert!(env.contains("# imports shared /common"), "{env}");
        assert!(!env.contains("OTHER"), "{env}");
        let yaml = String::from_utf8(render(&bytes, Format::Yaml, Some("prod")).unwrap()).unwrap();
        assert!(yaml.contains("\"QUOTE\": \"it's\\nx\"\n"), "{yaml}");
    }

    #[test]
    fn flat_forms_refuse_what_they_cannot_say() {
        let two = stored(vec![
            secret("dev", "/", "A", "1"),
            secret("prod", "/", "A", "2"),
        ]);
        let e = render(&two, Format::Dotenv, None).unwrap_err();
        assert!(matches!(e, RenderError::WhichEnvironment { .. }), "{e}");
        let e = render(&two, Format::Yaml, Some("stage")).unwrap_err();
        assert!(matches!(e, RenderError::NoSuchEnvironment { .. }), "{e}");
        let dup = stored(vec![
            secret("dev", "/", "A", "1"),
            secret("dev", "/x", "A", "2"),
        ]);
        let e = render(&dup, Format::Dotenv, Some("dev")).unwrap_err();
        assert!(e.to_string().contains("/, /x"), "{e}");
        let bad = stored(vec![secret("dev", "/", "A=B", "1")]);
        let e = render(&bad, Format::Dotenv, Some("dev")).unwrap_err();
        assert!(matches!(e, RenderError::BadKey { .. }), "{e}");
        assert!(render(&bad, Format::Yaml, Some("dev")).is_ok());
        let e = render(b"not json", Format::Yaml, Some("dev")).unwrap_err();
        assert!(matches!(e, RenderError::Unreadable(_)), "{e}");
    }
}
