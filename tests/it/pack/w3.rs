//! The GitHub workflows' "Storacha bridge tokens" step, run as written with
//! the storacha CLI (`.ci/setup` installs the version the step pins). The
//! old backup workflows held `W3_PRINCIPAL` (a key) and `W3_PROOF` (a
//! delegation from the space to it); made here the same way, offline, they
//! must become bridge tokens for that space in `GITHUB_ENV`, masked in the
//! log. A proof for another space, or no Storacha secrets at all, fail with
//! a message naming the secrets. Nothing leaves the machine: the CLI signs
//! locally.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use serde_yaml_ng::Value;

use crate::harness::text;

/// What pitr calls on the bridge (docs/DESTINATIONS.md).
const ABILITIES: [&str; 5] = [
    "store/add",
    "upload/add",
    "upload/list",
    "store/remove",
    "upload/remove",
];

/// `storacha ARGS` with its store `store` under `home`, acting as
/// `principal` when given.
fn storacha(home: &Path, store: &str, principal: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("storacha");
    cmd.args(args)
        .env("HOME", home)
        .env("STORACHA_STORE_NAME", store);
    if let Some(p) = principal {
        cmd.env("STORACHA_PRINCIPAL", p);
    }
    let out = cmd
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

/// The step's script from workflow `rel`.
fn token_step(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let wf: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
    let jobs = wf.get("jobs").and_then(Value::as_mapping).expect("jobs");
    let steps = jobs
        .values()
        .next()
        .and_then(|j| j.get("steps"))
        .and_then(Value::as_sequence)
        .expect("steps");
    let step = steps
        .iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some("Storacha bridge tokens"))
        .unwrap_or_else(|| panic!("{rel}: no step \"Storacha bridge tokens\""));
    // It runs before pitr, and only for Storacha.
    let pitr_at = steps
        .iter()
        .position(|s| {
            s.get("run")
                .and_then(Value::as_str)
                .is_some_and(|r| r.contains("docker run"))
        })
        .expect("the pitr step");
    let at = steps.iter().position(|s| s == step).expect("position");
    assert!(at < pitr_at, "{rel}: the token step must run before pitr");
    assert_eq!(
        step.get("if").and_then(Value::as_str),
        Some("inputs.destination-kind == 'storacha'"),
        "{rel}"
    );
    step.get("run")
        .and_then(Value::as_str)
        .expect("run")
        .to_owned()
}

/// Runs `script` as the runner would, with the step's variables; returns
/// the output and what it wrote to `GITHUB_ENV`.
fn run_step(
    home: &Path,
    script: &str,
    vars: &[(&str, &str)],
) -> (Output, BTreeMap<String, String>) {
    let github_env = home.join("github_env");
    std::fs::write(&github_env, "").expect("GITHUB_ENV");
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GITHUB_ENV", &github_env)
        .env("GITHUB_RUN_ID", "4242")
        .envs(vars.iter().copied())
        .output()
        .expect("bash");
    let written = std::fs::read_to_string(&github_env)
        .expect("GITHUB_ENV")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (out, written)
}

#[test]
fn w3_principal_and_proof_become_bridge_tokens_for_their_space() {
    let home = tempfile::tempdir().expect("tempdir");
    let home = home.path();
    // The old workflows' secrets: an agent key, and the space owner's
    // delegation to it.
    let key: serde_json::Value = serde_json::from_str(&storacha(
        home,
        "ci-key",
        None,
        &["key", "create", "--json"],
    ))
    .expect("key create --json");
    let (agent, principal) = (
        key["did"].as_str().expect("did").to_owned(),
        key["key"].as_str().expect("key").to_owned(),
    );
    let space = did_in(&storacha(
        home,
        "owner",
        None,
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
    let proof = storacha(
        home,
        "owner",
        None,
        &[
            "delegation",
            "create",
            &agent,
            "--can",
            "store/*",
            "--can",
            "upload/*",
            "--base64",
        ],
    );
    // Another DID than the proof's space (the agent's own will do).
    let other_space = agent.clone();

    for rel in [
        "deploy/github/pitr-export.yml",
        "deploy/github/pitr-verify.yml",
    ] {
        let script = token_step(rel);
        let w3 = [
            ("W3_PRINCIPAL", principal.as_str()),
            ("W3_PROOF", proof.as_str()),
            ("SPACE", space.as_str()),
            ("AUTH_SECRET", ""),
            ("AUTHORIZATION", ""),
        ];
        let (out, env) = run_step(home, &script, &w3);
        assert!(out.status.success(), "{rel}: {}", text(&out));
        assert_eq!(env.get("STORACHA_SPACE"), Some(&space), "{rel}");
        let secret = env.get("STORACHA_AUTH_SECRET").expect("auth secret");
        let authorization = env.get("STORACHA_AUTHORIZATION").expect("authorization");
        let log = String::from_utf8_lossy(&out.stdout);
        for token in [secret, authorization] {
            assert!(
                log.contains(&format!("::add-mask::{token}")),
                "{rel}: a token is not masked in the log"
            );
        }
        // X-Auth-Secret: the coupon's password, base64url; Authorization:
        // the delegation (a CAR, base64url), for this space and every
        // ability pitr calls.
        let (_, password) = cid::multibase::decode(secret).expect("X-Auth-Secret is multibase");
        assert_eq!(password.len(), 32, "{rel}");
        let (_, car) = cid::multibase::decode(authorization).expect("Authorization is multibase");
        let has = |needle: &str| car.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(has(&space), "{rel}: the delegation is not for {space}");
        for ability in ABILITIES {
            assert!(has(ability), "{rel}: the delegation lacks {ability}");
        }
        // The refusals, once: the two steps differ only in how long the
        // tokens live (the job's timeout).
        let same = |s: &str| {
            s.lines()
                .filter(|l| !l.contains("--expiration"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        if rel.ends_with("verify.yml") {
            assert_eq!(
                same(&script),
                same(&token_step("deploy/github/pitr-export.yml")),
                "the two workflows' token steps drift apart"
            );
            continue;
        }

        // The proof is for another space than STORACHA_SPACE says.
        let mut wrong = w3;
        wrong[2] = ("SPACE", other_space.as_str());
        let (out, env) = run_step(home, &script, &wrong);
        assert!(!out.status.success(), "{rel}: {}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "W3_PROOF delegates space {space}, but STORACHA_SPACE is {other_space}"
            )),
            "{rel}: {}",
            text(&out)
        );
        assert!(env.is_empty(), "{rel}: nothing is passed on: {env:?}");

        // No Storacha credentials at all.
        let (out, _) = run_step(
            home,
            &script,
            &[
                ("W3_PRINCIPAL", ""),
                ("W3_PROOF", ""),
                ("SPACE", space.as_str()),
                ("AUTH_SECRET", ""),
                ("AUTHORIZATION", ""),
            ],
        );
        assert!(!out.status.success(), "{rel}: {}", text(&out));
        assert!(
            text(&out).contains("needs the secrets W3_PRINCIPAL and W3_PROOF"),
            "{rel}: {}",
            text(&out)
        );

        // Long-lived bridge tokens as secrets: used as they are.
        let (out, env) = run_step(
            home,
            &script,
            &[
                ("W3_PRINCIPAL", ""),
                ("W3_PROOF", ""),
                ("SPACE", space.as_str()),
                ("AUTH_SECRET", "uc2VjcmV0"),
                ("AUTHORIZATION", "uYXV0aA"),
            ],
        );
        assert!(out.status.success(), "{rel}: {}", text(&out));
        assert!(env.is_empty(), "{rel}: {env:?}");
    }
}
