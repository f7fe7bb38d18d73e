//! `W3_PRINCIPAL` and `W3_PROOF`, the secrets of the old backup workflows,
//! go to pitr as they are: the GitHub workflows pass them straight to the
//! Storacha destination's `principal` and `proof`, and what the storacha
//! CLI makes (`.ci/setup` installs it; it signs locally, nothing leaves the
//! machine) is what pitr reads: `pitr check --offline` names the space and
//! the abilities the proof grants, and refuses a proof that lacks some, is
//! for another space or another agent, with the command that fixes it.

use std::path::Path;
use std::process::{Command, Output};

use serde_yaml_ng::Value;

use crate::support::text;

/// What pitr invokes on a space (docs/DESTINATIONS.md).
const ABILITIES: [&str; 7] = [
    "space/blob/add",
    "space/blob/remove",
    "space/index/add",
    "upload/add",
    "upload/list",
    "upload/shard/list",
    "upload/remove",
];

/// `storacha ARGS` with its store `store` under `home`.
fn storacha(home: &Path, store: &str, args: &[&str]) -> String {
    let out = Command::new("storacha")
        .args(args)
        .env("HOME", home)
        .env("STORACHA_STORE_NAME", store)
        .output()
        .expect("the storacha CLI (npm install -g @storacha/cli; .ci/setup does)");
    assert!(out.status.success(), "storacha {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The first `did:key:...` word of `s`.
fn did_in(s: &str) -> String {
    s.split_whitespace()
        .find(|w| w.starts_with("did:key:"))
        .unwrap_or_else(|| panic!("no did:key in {s:?}"))
        .to_owned()
}

/// `pitr check --offline` of a config with one Storacha destination whose
/// principal, proof and space come from the environment, as the workflows
/// give them.
fn check(dir: &Path, principal: &str, proof: &str, space: &str) -> Output {
    let (head, _) = crate::support::repository_toml(dir, "");
    let config = dir.join("pitr.toml");
    std::fs::write(
        &config,
        format!(
            "{head}\n[[destination]]\nname = \"primary\"\nkind = \"storacha\"\nspace = \"set by the environment\"\nprincipal = \"set by the environment\"\nproof = \"set by the environment\"\n"
        ),
    )
    .expect("config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pitr"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PITR_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["check", "--offline", "-c"])
        .arg(&config)
        .env("PITR_DESTINATION_PRIMARY_PRINCIPAL", principal)
        .env("PITR_DESTINATION_PRIMARY_PROOF", proof)
        .env("PITR_DESTINATION_PRIMARY_SPACE", space)
        .output()
        .expect("run pitr")
}

#[test]
fn w3_principal_and_proof_from_the_cli_are_read_and_checked() {
    let home = tempfile::tempdir().expect("tempdir");
    let home = home.path();
    let key: serde_json::Value =
        serde_json::from_str(&storacha(home, "ci-key", &["key", "create", "--json"]))
            .expect("key create --json");
    let (agent, principal) = (
        key["did"].as_str().expect("did").to_owned(),
        key["key"].as_str().expect("key").to_owned(),
    );
    let space = did_in(&storacha(
        home,
        "owner",
        &[
            "space",
            "create",
            "pitr-test",
            "--no-recovery",
            "--no-account",
            "--no-gateway-authorization",
            "--no-customer",
        ],
    ));
    let delegate = |abilities: &[&str]| {
        let mut args = vec!["delegation", "create", agent.as_str()];
        for a in abilities {
            args.extend(["--can", a]);
        }
        args.push("--base64");
        storacha(home, "owner", &args)
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let full = delegate(&ABILITIES);
    let out = check(dir.path(), &principal, &full, &space);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!("space {space}, agent {agent}")),
        "{said}"
    );
    assert!(said.contains("nothing missing"), "{said}");
    for a in ABILITIES {
        assert!(said.contains(a), "{a}: {said}");
    }

    // A proof without the blob abilities: named, with the command.
    let dir = tempfile::tempdir().expect("tempdir");
    let partial = delegate(&["upload/add", "upload/list"]);
    let out = check(dir.path(), &principal, &partial, &space);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("MISSING space/blob/add, space/blob/remove, space/index/add, upload/shard/list, upload/remove"), "{said}");
    assert!(
        said.contains(&format!(
            "storacha delegation create {agent} --can space/blob/add"
        )),
        "{said}"
    );

    // A proof for this space given with another space's DID.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = check(dir.path(), &principal, &full, &agent);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("not for the space {agent}")),
        "{}",
        text(&out)
    );

    // Another agent's key with this proof.
    let other: serde_json::Value =
        serde_json::from_str(&storacha(home, "ci-key2", &["key", "create", "--json"]))
            .expect("key create --json");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = check(
        dir.path(),
        other["key"].as_str().expect("key"),
        &full,
        &space,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("delegates to {agent}")),
        "{}",
        text(&out)
    );
}

#[test]
fn workflows_pass_w3_principal_and_proof_straight_to_pitr() {
    for rel in [
        "deploy/github/pitr-export.yml",
        "deploy/github/pitr-verify.yml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("bridge"), "{rel} still makes bridge tokens");
        let wf: Value = serde_yaml_ng::from_str(&text).expect("yaml");
        let step = wf["jobs"]
            .as_mapping()
            .and_then(|j| j.values().next())
            .and_then(|j| j["steps"].as_sequence())
            .and_then(|s| {
                s.iter()
                    .find(|s| s["run"].as_str().is_some_and(|r| r.contains("docker run")))
            })
            .unwrap_or_else(|| panic!("{rel}: no pitr step"));
        let env = &step["env"];
        assert_eq!(
            env["PITR_DESTINATION_PRIMARY_PRINCIPAL"].as_str(),
            Some("${{ secrets.W3_PRINCIPAL }}"),
            "{rel}"
        );
        assert_eq!(
            env["PITR_DESTINATION_PRIMARY_PROOF"].as_str(),
            Some("${{ secrets.W3_PROOF }}"),
            "{rel}"
        );
        let run = step["run"].as_str().unwrap_or("");
        assert!(
            run.contains("PITR_DESTINATION_PRIMARY_PRINCIPAL PITR_DESTINATION_PRIMARY_PROOF"),
            "{rel}: the pitr container is not given the two variables"
        );
    }
}
