//! Storacha's own upload service on loopback for the tests: the Node harness
//! in `tests/storacha/` (`harness.mjs`, its README says what it serves),
//! which runs the published `@storacha/upload-api` service with its
//! in-memory test context, a blob PUT target, the indexing side and a
//! trustless gateway. Also drives Storacha's JS client (`interop.mjs`) with
//! the same credentials, for interoperability checks.
//!
//! Needs `node` and `npm ci` run in `tests/storacha` (`.ci/setup` does both).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// Where the harness's URLs and identity are, as `harness.mjs` writes them.
#[derive(Debug, Clone, Deserialize)]
pub struct StorachaInfo {
    /// The ucanto endpoint (`POST /`), e.g. `http://127.0.0.1:PORT`.
    pub service_url: String,
    /// The service's DID: the audience of every invocation
    /// (`did:web:test.up.storacha.network`).
    pub service_did: String,
    /// The `did:key` behind the service DID: what signs its receipts.
    pub service_key_did: String,
    /// `{service_url}/receipt/`: `GET <task CID>` answers (302) with the
    /// agent message holding that task's receipt.
    pub receipts_url: String,
    /// The trustless gateway: `GET /ipfs/<cid>[/path]?format=car|raw`.
    pub gateway_url: String,
    /// The harness's own control endpoints (credentials).
    pub control_url: String,
}

/// A space and an agent allowed to use it, as users hold them.
#[derive(Debug, Clone, Deserialize)]
pub struct StorachaCredentials {
    /// The space the credentials were asked for (provisioned).
    pub space: String,
    /// The space the proof delegates (another one with `other_space`).
    pub proof_space: String,
    /// The agent's private key as `storacha key create` prints it
    /// (`W3_PRINCIPAL`).
    pub principal: String,
    /// The agent's `did:key`.
    pub principal_did: String,
    /// The delegation as `storacha delegation create … --base64` writes it
    /// (`W3_PROOF`).
    pub proof: String,
    /// The abilities the proof grants on `proof_space`.
    pub can: Vec<String>,
    /// Unix seconds when the proof expired, for an expired one.
    pub expiration: Option<i64>,
}

impl StorachaCredentials {
    /// Writes the key and the proof as a deployment keeps them
    /// (`dir/w3-principal`, `dir/w3-proof`, one line each); returns both
    /// paths (for `principal_file` / `proof_file`).
    pub fn write_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let principal = dir.join("w3-principal");
        let proof = dir.join("w3-proof");
        std::fs::write(&principal, format!("{}\n", self.principal)).expect("write principal");
        std::fs::write(&proof, format!("{}\n", self.proof)).expect("write proof");
        (principal, proof)
    }
}

/// What kind of credentials to make; the default is a valid proof for the
/// space with `storacha delegation create`'s default abilities.
#[derive(Debug, Clone, Default)]
pub struct CredentialOptions {
    /// Grant exactly these abilities (e.g. leave one out).
    pub can: Option<Vec<String>>,
    /// A proof that expired a minute ago.
    pub expired: bool,
    /// A proof for another (also provisioned) space than `space`.
    pub other_space: bool,
}

/// An upload the JS client made.
#[derive(Debug, Clone, Deserialize)]
pub struct JsUpload {
    /// The upload's root CID.
    pub root: String,
    /// Its shards' CIDs (CAR CIDs, `bag…`).
    pub shards: Vec<String>,
}

/// What the JS client read back through the gateway.
#[derive(Debug, Clone)]
pub struct JsFetch {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// How many blocks the gateway's CAR held.
    pub blocks: u64,
}

/// A fault for one gateway request (`StorachaHarness::gateway_faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayFault {
    /// Answer with this HTTP status instead.
    Status(u16),
    /// A complete HTTP answer whose body stops halfway (a CAR cut inside a
    /// block).
    Truncate,
    /// Drop the connection halfway through the body.
    Abort,
    /// Flip one byte in the middle of the body.
    Tamper,
}

/// What the harness counted since it started.
#[derive(Debug, Clone, Deserialize)]
pub struct StorachaStats {
    /// Invocations received on the service's HTTP front, by ability
    /// (`space/blob/add`, `ucan/conclude`, ...).
    pub invocations: std::collections::BTreeMap<String, u64>,
    /// PUT requests to the blob targets (storage nodes).
    pub puts: u64,
    /// Requests to the gateway.
    pub gateway_requests: u64,
}

/// A running harness, killed on drop.
pub struct StorachaHarness {
    child: Child,
    /// URLs and identity of the running service.
    pub info: StorachaInfo,
    dir: tempfile::TempDir,
}

/// `tests/storacha` in the source tree.
pub fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/storacha")
}

fn check_installed() {
    assert!(
        harness_dir()
            .join("node_modules/@storacha/upload-api")
            .is_dir(),
        "the Storacha harness's packages are missing: run `npm ci` in {} (.ci/setup does)",
        harness_dir().display()
    );
}

impl StorachaHarness {
    /// Starts `harness.mjs` on free loopback ports and waits (at most 60 s)
    /// until its service answers.
    pub fn start() -> StorachaHarness {
        check_installed();
        let dir = tempfile::tempdir().expect("temp dir");
        let info_file = dir.path().join("info.json");
        let log = dir.path().join("harness.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new("node")
            .arg(harness_dir().join("harness.mjs"))
            .arg("--info")
            .arg(&info_file)
            .current_dir(harness_dir())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("start node (.ci/setup installs nodejs)");
        let mut harness = StorachaHarness {
            child,
            info: StorachaInfo {
                service_url: String::new(),
                service_did: String::new(),
                service_key_did: String::new(),
                receipts_url: String::new(),
                gateway_url: String::new(),
                control_url: String::new(),
            },
            dir,
        };
        // The info file appears (renamed into place) once every server listens.
        let info = super::eventually_blocking(
            "the Storacha harness started",
            Duration::from_secs(60),
            || {
                if let Ok(text) = std::fs::read_to_string(&info_file) {
                    return Ok(serde_json::from_str::<StorachaInfo>(&text)
                        .unwrap_or_else(|e| panic!("harness info {text:?}: {e}")));
                }
                if let Ok(Some(status)) = harness.child.try_wait() {
                    panic!("the Storacha harness exited ({status}):\n{}", harness.log());
                }
                Err(harness.log())
            },
        );
        harness.info = info;
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "10"])
            .arg(&harness.info.service_url)
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "the Storacha harness does not answer at {}: {}\n{}",
            harness.info.service_url,
            super::text(&out),
            harness.log()
        );
        harness
    }

    /// The harness's output so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("harness.log")).unwrap_or_default()
    }

    /// A new provisioned space and an agent's credentials for it.
    pub fn credentials(&self, opts: &CredentialOptions) -> StorachaCredentials {
        let mut body = serde_json::Map::new();
        if let Some(can) = &opts.can {
            body.insert("can".into(), can.clone().into());
        }
        body.insert("expired".into(), opts.expired.into());
        body.insert("other_space".into(), opts.other_space.into());
        let answer = self.control("credentials", &Value::Object(body));
        serde_json::from_slice(&answer).unwrap_or_else(|e| {
            panic!(
                "credentials answer: {e}: {}",
                String::from_utf8_lossy(&answer)
            )
        })
    }

    /// `POST {control_url}/PATH` with a JSON body; the answer's body.
    fn control(&self, path: &str, body: &Value) -> Vec<u8> {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "30", "-X", "POST"])
            .args(["-H", "content-type: application/json", "-d"])
            .arg(body.to_string())
            .arg(format!("{}/{path}", self.info.control_url))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "{path}: {}\n{}",
            super::text(&out),
            self.log()
        );
        out.stdout
    }

    /// Queues faults for the next gateway requests, one per request in order.
    pub fn gateway_faults(&self, faults: &[GatewayFault]) {
        let faults: Vec<Value> = faults
            .iter()
            .map(|f| match f {
                GatewayFault::Status(s) => serde_json::json!({ "status": s }),
                GatewayFault::Truncate => serde_json::json!({ "truncate": true }),
                GatewayFault::Abort => serde_json::json!({ "abort": true }),
                GatewayFault::Tamper => serde_json::json!({ "tamper": true }),
            })
            .collect();
        self.control("gateway-faults", &Value::Array(faults));
    }

    /// What the harness counted so far.
    pub fn stats(&self) -> StorachaStats {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "30"])
            .arg(format!("{}/stats", self.info.control_url))
            .output()
            .expect("curl");
        assert!(out.status.success(), "stats: {}", super::text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stats answer: {e}: {}", super::text(&out)))
    }

    /// Runs `interop.mjs ARGS` as the holder of `creds`; its output.
    pub fn interop_output(&self, creds: &StorachaCredentials, args: &[&str]) -> Output {
        Command::new("node")
            .arg(harness_dir().join("interop.mjs"))
            .args(args)
            .current_dir(harness_dir())
            .env("STORACHA_SERVICE_URL", &self.info.service_url)
            .env("STORACHA_SERVICE_DID", &self.info.service_did)
            .env("STORACHA_GATEWAY_URL", &self.info.gateway_url)
            .env("W3_PRINCIPAL", &creds.principal)
            .env("W3_PROOF", &creds.proof)
            .stdin(Stdio::null())
            .output()
            .expect("node")
    }

    /// Runs `interop.mjs ARGS` and returns its JSON answer; panics when it
    /// fails.
    pub fn interop(&self, creds: &StorachaCredentials, args: &[&str]) -> Value {
        let out = self.interop_output(creds, args);
        assert!(
            out.status.success(),
            "interop.mjs {args:?}: {}\nharness log:\n{}",
            super::text(&out),
            self.log()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("interop.mjs {args:?} answer: {e}: {}", super::text(&out)))
    }

    /// The JS client uploads `file`'s bytes (`uploadFile`), or with `name`
    /// a directory holding one file of that name (`uploadDirectory`).
    pub fn js_upload(
        &self,
        creds: &StorachaCredentials,
        file: &Path,
        name: Option<&str>,
    ) -> JsUpload {
        let file = file.to_str().expect("a UTF-8 path");
        let mut args = vec!["upload", file];
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        serde_json::from_value(self.interop(creds, &args)).expect("an upload")
    }

    /// Every upload in the space as the JS client lists it (`upload/list`
    /// to the end, `upload/shard/list` for each), and how many pages that
    /// took.
    pub fn js_list(
        &self,
        creds: &StorachaCredentials,
        page_size: Option<u32>,
    ) -> (Vec<JsUpload>, u64) {
        let size = page_size.map(|s| s.to_string());
        let mut args = vec!["list"];
        if let Some(s) = &size {
            args.extend(["--page-size", s]);
        }
        let v = self.interop(creds, &args);
        let uploads = serde_json::from_value(v["uploads"].clone()).expect("uploads");
        (uploads, v["pages"].as_u64().expect("pages"))
    }

    /// The JS client fetches `root` (and `path` in it) from the gateway as a
    /// CAR, checks every block against its CID and reads the UnixFS file.
    pub fn js_fetch(&self, creds: &StorachaCredentials, root: &str, path: Option<&str>) -> JsFetch {
        let out_file = tempfile::NamedTempFile::new().expect("temp file");
        let out = out_file.path().to_str().expect("a UTF-8 path");
        let mut args = vec!["fetch", root, "--out", out];
        if let Some(p) = path {
            args.extend(["--path", p]);
        }
        let v = self.interop(creds, &args);
        JsFetch {
            bytes: std::fs::read(out_file.path()).expect("fetched bytes"),
            blocks: v["blocks"].as_u64().expect("blocks"),
        }
    }

    /// The JS client stores `file`'s bytes with `space/blob/add` alone (no
    /// index, no upload); returns their raw CID.
    pub fn js_blob(&self, creds: &StorachaCredentials, file: &Path) -> String {
        let file = file.to_str().expect("a UTF-8 path");
        let v = self.interop(creds, &["blob", file]);
        v["cid"].as_str().expect("cid").to_owned()
    }

    /// The JS client removes the upload `root` and its shards' blobs.
    pub fn js_remove(&self, creds: &StorachaCredentials, root: &str) {
        self.interop(creds, &["remove", root]);
    }

    /// `GET {gateway}/ipfs/{path}` with curl: the HTTP status and body.
    pub fn gateway_get(&self, path: &str) -> (u16, Vec<u8>) {
        let body = tempfile::NamedTempFile::new().expect("temp file");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-o"])
            .arg(body.path())
            .args(["-w", "%{http_code}"])
            .arg(format!("{}/ipfs/{path}", self.info.gateway_url))
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl: {}", super::text(&out));
        let status = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("an HTTP status");
        (status, std::fs::read(body.path()).expect("body"))
    }
}

impl Drop for StorachaHarness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
