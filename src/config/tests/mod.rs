//! Unit tests of config loading. Each asserts on the message an operator
//! sees, not only on the error's existence.

mod command;
mod env;
mod file;
mod fleet;
mod infisical;
mod secrets;
mod sidecar;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::error::Ctx;
use super::raw::{self, KeyType, Section};
use super::{Config, ConfigError, DestinationKind};

const PATH: &str = "/etc/pitr/pitr.toml";

fn recipient() -> String {
    age::x25519::Identity::generate().to_public().to_string()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new(PATH), &env(vars))
}

/// The error and its message; fails the test if loading succeeded.
#[track_caller]
fn fail(text: &str, vars: &[(&str, &str)]) -> (ConfigError, String) {
    match load(text, vars) {
        Ok(c) => panic!("expected an error, loaded {c:?}"),
        Err(e) => {
            let msg = e.to_string();
            (e, msg)
        }
    }
}

/// Asserts that `msg` contains every one of `parts`.
#[track_caller]
fn contains_all(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}:\n{msg}");
    }
}

/// The error and message of loading `text` (no variables), which must fail
/// with a message that contains every one of `parts`. A failure shows
/// `text` too, so a table of cases says which one failed.
#[track_caller]
fn refused_with(text: &str, parts: &[&str]) -> (ConfigError, String) {
    let (e, msg) = fail(text, &[]);
    for p in parts {
        assert!(
            msg.contains(p),
            "message lacks {p:?}:\n{msg}\nconfig:\n{text}"
        );
    }
    (e, msg)
}

/// [`refused_with`]'s message.
#[track_caller]
fn refused(text: &str, parts: &[&str]) -> String {
    refused_with(text, parts).1
}

/// Like [`refused`], and the error must be a config error at `key`.
#[track_caller]
fn refused_at(text: &str, key: &str, parts: &[&str]) {
    let (e, _) = refused_with(text, parts);
    assert!(
        matches!(&e, ConfigError::Invalid { key: k, .. } if k == key),
        "{e:?}"
    );
}

/// The smallest valid config: recipients, state_dir, one destination.
fn minimal(r: &str) -> String {
    format!(
        r#"[repository]
recipients = ["{r}"]
state_dir = "/var/lib/pitr"

[[destination]]
name = "local"
kind = "fs"
path = "/var/lib/pitr/repo"
"#
    )
}

/// The minimal config with a `[[postgres]]` entry "main" (conninfo
/// `host=db`) whose further keys are `extra`.
fn with_postgres(extra: &str) -> String {
    format!(
        "{}[[postgres]]\nname = \"main\"\nconninfo = \"host=db\"\n{extra}\n",
        minimal(&recipient())
    )
}

/// The config's recipients as they were written.
fn recipient_strings(c: &Config) -> Vec<String> {
    c.repository
        .recipients
        .iter()
        .map(|r| r.to_string())
        .collect()
}
