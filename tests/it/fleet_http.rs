//! The fleet catalog's HTTP transport (docs/FLEET.md, "HTTP transport")
//! against real parts: a harness cluster is the fleet database, a real
//! `pitr fleet receive` applies what a `pitr run` sidecar with `kind =
//! "http"` POSTs, each batch as the database role of its token, and the
//! rows are the ones the `postgres` transport writes for the same
//! catalog.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pitr::config::{Config, FleetConfig, FleetKind};
use pitr::fleet::publish::{self, PublishOptions, PublishStatus};
use pitr::fleet::rows::HealthRow;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::fleet::{
    assert_no_duplicates, entry, fleet_database, json_of, local_backups, reader_config,
    windows_agree,
};
use crate::sidecar::{get, sidecar_config};
use crate::support::pg::free_port;
use crate::support::{PgCluster, Sidecar, TestRepo, eventually, pitr};

/// The sidecar's token (role `pitr_h`, instance `http-side`) and another
/// instance's (role `pitr_p`, instance `pg-side`).
const TOKEN_H: &str = "token-of-the-http-side-sidecar";
const TOKEN_P: &str = "token-of-the-pg-side-sidecar";

/// A request to the receiver on `port`: status and JSON body.
async fn call(
    port: u16,
    token: Option<&str>,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Value), String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let client = reqwest::Client::new();
    let mut req = match body {
        Some(b) => client
            .post(&url)
            .header("content-type", "application/json")
            .body(b),
        None => client.get(&url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    let json = serde_json::from_str(&text).map_err(|e| format!("{status} {text:?}: {e}"))?;
    Ok((status, json))
}

/// POSTs a batch as `TOKEN_H` over a plain socket: `head` ends the
/// headers, `chunks` follow; the answer's status. The receiver may answer
/// before the body is sent, which an HTTP client reports as an error.
async fn raw_post(port: u16, head: &str, chunks: &[&[u8]]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the receiver");
    let request = format!(
        "POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN_H}\r\n\
         Content-Type: application/json\r\n{head}"
    );
    s.write_all(request.as_bytes())
        .await
        .expect("send the head");
    for c in chunks {
        if s.write_all(c).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    let line = String::from_utf8_lossy(&answer[..n]).into_owned();
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

/// A batch of `instance` (its heartbeat and one health row) as JSON.
fn batch(instance: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "instance": instance,
        "labels": {},
        "version": "forged",
        "seq": 1,
        "upserts": [{"table": "health_checks", "key": ["forged"], "values": ["false", "forged"]}],
        "deletes": [],
        "final": false,
        "resync": false
    }))
    .expect("serializes")
}

/// Every published row of `instance`, but the instance and seq columns
/// (seq is the publish that last changed a row), as text in
/// a stable order; and its `instances` row but the times.
fn rows_of(fleet: &PgCluster, instance: &str) -> String {
    let mut out = fleet.psql_at(
        &fleet.conninfo("fleet"),
        &format!(
            "SELECT labels::text || ' ' || version || ' ' || published_seq \
             FROM pitr_fleet.instances WHERE instance = '{instance}'"
        ),
    );
    for t in pitr::fleet::rows::TABLES.map(|t| t.name) {
        let rows = fleet.psql_at(
            &fleet.conninfo("fleet"),
            &format!(
                "SELECT coalesce(string_agg(r, E'\\n' ORDER BY r), '') FROM \
                 (SELECT (to_jsonb(t) - 'instance' - 'seq')::text AS r FROM pitr_fleet.{t} t \
                  WHERE instance = '{instance}') s"
            ),
        );
        out.push_str(&format!("\n{t}:\n{rows}"));
    }
    out
}

/// Publishes the repository of `config` once, in this process, with
/// `fleet` and a fixed health row, until the fleet reflects the catalog.
async fn publish_once(repo: &TestRepo, config: &Arc<Config>, fleet: FleetConfig) {
    let (tx, rx) = tokio::sync::watch::channel(PublishStatus::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let what = format!("{} published over {:?}", fleet.instance, fleet.kind);
    let opts = PublishOptions {
        fleet,
        config: config.clone(),
        health: Arc::new(|| {
            vec![HealthRow {
                id: "test/fixed".into(),
                ok: true,
                summary: "the same for both transports".into(),
            }]
        }),
        may_migrate: false,
    };
    let task = tokio::spawn(publish::run(repo.open().await, opts, tx, async {
        let _ = stopped.await;
    }));
    eventually(what, Duration::from_secs(60), async || {
        let s = rx.borrow().clone();
        if s.last_publish.is_some() && s.published_seq == s.catalog_seq {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let _ = stop.send(());
    task.await.expect("the publisher stops");
}

/// A receiver's files in `dir`: its tokens file (`tokens`: its text) and
/// its config (the fleet database as `fleet_receiver`, a free loopback
/// port, `extra` keys of `[fleet]`).
struct ReceiverFiles {
    tokens: PathBuf,
    config: PathBuf,
    port: u16,
}

fn receiver(dir: &Path, fleet: &PgCluster, tokens: &str, extra: &str) -> ReceiverFiles {
    let files = ReceiverFiles {
        tokens: dir.join("fleet-tokens"),
        config: dir.join("receiver.toml"),
        port: free_port(),
    };
    write(&files.tokens, tokens);
    write(
        &files.config,
        &format!(
            "[fleet]\nurl = \"host={} port={} user=fleet_receiver dbname=fleet\"\n\
             receive_listen = \"127.0.0.1:{}\"\nreceive_tokens_file = \"{}\"\n{extra}",
            fleet.host(),
            fleet.port(),
            files.port,
            files.tokens.display()
        ),
    );
    files
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_publishes_through_the_receiver_the_rows_a_direct_connection_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The DBA's part (docs/FLEET.md): a role per instance, mapped; the
    // receiver's login, a member of each so it may SET ROLE to them.
    let fleet = fleet_database(
        dir.path(),
        "CREATE ROLE pitr_h LOGIN IN ROLE pitr_fleet_writer; \
         CREATE ROLE pitr_p LOGIN IN ROLE pitr_fleet_writer; \
         CREATE ROLE fleet_receiver LOGIN IN ROLE pitr_fleet_reader; \
         GRANT pitr_h, pitr_p TO fleet_receiver; \
         CREATE ROLE fleet_reader LOGIN IN ROLE pitr_fleet_reader; \
         INSERT INTO pitr_fleet.instance_roles VALUES ('pitr_h', 'http-side'), ('pitr_p', 'pg-side')",
    );
    let reader = reader_config(dir.path(), "reader.toml", &fleet, "fleet_reader");
    let reader_s = reader.to_str().expect("utf-8 path");

    // The receiver: its tokens as digests, its own login role.
    let sha = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let r = receiver(
        dir.path(),
        &fleet,
        &format!(
            "# role sha256(token)\npitr_h {}\npitr_p {}\n",
            sha(TOKEN_H),
            sha(TOKEN_P)
        ),
        "",
    );
    let (tokens, rport, receiver_cfg) = (r.tokens, r.port, r.config);
    let receiver = Sidecar::start_with(&["fleet", "receive"], &receiver_cfg);
    let (status, body) = eventually(
        "the receiver answers",
        Duration::from_secs(60),
        async || {
            call(rport, None, "/v1/instance?name=http-side", None)
                .await
                .map_err(|e| format!("{e}\n{}", receiver.log_text()))
        },
    )
    .await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, body) = call(
        rport,
        Some("wrong"),
        "/v1/batches",
        Some(batch("http-side")),
    )
    .await
    .expect("answers");
    assert_eq!(status, 401, "a wrong token: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("bearer token")),
        "{body}"
    );
    // The tokens file is read again when it changes: a revoked token is
    // refused from the next request, a broken file refuses everyone (503,
    // saying why), and the fixed file lets the token in again.
    let tokens_text = std::fs::read_to_string(&tokens).expect("read tokens");
    write(&tokens, &format!("pitr_p {}\n", sha(TOKEN_P)));
    let (status, body) = call(rport, Some(TOKEN_H), "/v1/instance?name=http-side", None)
        .await
        .expect("answers");
    assert_eq!(status, 401, "a revoked token: {body}");
    write(&tokens, "pitr_h not-a-digest\n");
    let (status, body) = call(rport, Some(TOKEN_H), "/v1/instance?name=http-side", None)
        .await
        .expect("answers");
    assert_eq!(status, 503, "a broken tokens file: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("tokens file") && e.contains("line 1")),
        "{body}"
    );
    write(&tokens, &tokens_text);
    let (status, body) = call(rport, Some(TOKEN_H), "/v1/instance?name=http-side", None)
        .await
        .expect("answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["published_seq"], Value::Null, "nothing published yet");
    assert_eq!(body["schema_version"], 1);
    // An oversized body is refused before it is read; a malformed one,
    // and a table outside the fixed list, before any SQL.
    let max = pitr::fleet::batch::MAX_BODY;
    let declared = format!("Content-Length: {}\r\n\r\n", max + 1);
    assert_eq!(
        raw_post(rport, &declared, &[]).await,
        413,
        "declared too long"
    );
    let chunk = format!("{:x}\r\n{}\r\n", 1 << 20, " ".repeat(1 << 20));
    let chunks = vec![chunk.as_bytes(); max / (1 << 20) + 1];
    let chunked = "Transfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        raw_post(rport, chunked, &chunks).await,
        413,
        "sent too long"
    );
    let (status, body) = call(rport, Some(TOKEN_H), "/v1/batches", Some(b"{".to_vec()))
        .await
        .expect("answers");
    assert_eq!(status, 400, "{body}");
    let forged = String::from_utf8(batch("http-side"))
        .expect("utf-8")
        .replace("health_checks", "instance_roles");
    let (status, body) = call(
        rport,
        Some(TOKEN_H),
        "/v1/batches",
        Some(forged.into_bytes()),
    )
    .await
    .expect("answers");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no table")),
        "{body}"
    );

    // The sidecar over HTTP: its windows in the fleet are its pitr list's.
    let token_file = dir.path().join("token");
    write(&token_file, &format!("{TOKEN_H}\n"));
    let pg = PgCluster::start();
    let repo = TestRepo::new().await;
    let (cfg, port) = sidecar_config(
        &repo,
        &pg,
        &format!(
            "\n[fleet]\nkind = \"http\"\nurl = \"http://127.0.0.1:{rport}\"\ntoken_file = \"{}\"\n\
             instance = \"http-side\"\nlabels = {{ service = \"api\" }}\npublish_interval = \"1s\"\n",
            token_file.display()
        ),
    );
    let cfg_s = cfg.to_str().expect("utf-8 path");
    let sidecar = Sidecar::start(&cfg);
    let list = eventually(
        "the http sidecar's windows in the fleet equal its pitr list",
        Duration::from_secs(180),
        async || {
            let list = json_of(&["fleet", "list", "--json", "-c", reader_s])?;
            let local = json_of(&["list", "--json", "-c", cfg_s])?;
            windows_agree(&list, &local, "http-side", "postgres", "main")
                .map(|()| list)
                .map_err(|e| format!("{e}\n{}\n{}", sidecar.log_text(), receiver.log_text()))
        },
    )
    .await;
    let main = entry(&list, "http-side", "main").expect("listed");
    assert_eq!(main["labels"]["service"], "api");
    let out = pitr(&["check", "-c", cfg_s]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("fleet http-side: receiver reachable, schema version 1"),
        "{printed}"
    );

    // PostgreSQL, not the receiver, refuses a token the rows of another
    // instance, existing or new (row-level security, SQLSTATE 42501, on
    // the heartbeat each batch starts with). Nothing changes.
    for (instance, message) in [
        ("http-side", "row-level security"),
        ("nobody", "row-level security"),
    ] {
        let (status, body) = call(rport, Some(TOKEN_P), "/v1/batches", Some(batch(instance)))
            .await
            .expect("answers");
        assert_eq!(status, 403, "{instance}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{instance}: {error}");
    }
    // Nothing of the forged batch landed: its heartbeat (version
    // "forged", instance "nobody") and its health row. (The sidecar goes on
    // publishing its own rows meanwhile, so they are not compared.)
    assert_eq!(
        fleet.psql_at(
            &fleet.conninfo("fleet"),
            "SELECT (SELECT count(*) FROM pitr_fleet.instances \
                     WHERE instance = 'nobody' OR version = 'forged') \
                  + (SELECT count(*) FROM pitr_fleet.health_checks WHERE id = 'forged')",
        ),
        "0",
        "a refused batch changed rows"
    );

    // The receiver down: the sidecar keeps working (a base backup
    // completes), says so in /health, and catches up once it is back,
    // with no duplicate rows.
    let fleet_backups = || {
        json_of(&["fleet", "show", "--json", "http-side/main", "-c", reader_s])
            .map(|show| show["backups"].as_array().map_or(0, Vec::len))
    };
    let backups_before = eventually(
        "the sidecar's first base backup in the fleet",
        Duration::from_secs(120),
        async || {
            let (local, published) = (local_backups(&cfg)?, fleet_backups()?);
            if local > 0 && local == published {
                Ok(local)
            } else {
                Err(format!("{local} local, {published} in the fleet"))
            }
        },
    )
    .await;
    receiver.stop();
    pg.psql("CREATE TABLE during_outage AS SELECT g FROM generate_series(1, 50000) g; SELECT pg_switch_wal()");
    let out = pitr(&["backup", "-c", cfg_s]);
    assert!(
        out.status.success(),
        "a base backup while the receiver is down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the publisher notices the receiver is down",
        Duration::from_secs(60),
        async || {
            let (_, body) = get(port, "/health").await.ok_or("no answer")?;
            let h: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let log = sidecar.log_text();
            if h["fleet"]["last_error"].is_string() && log.contains("fleet receiver at") {
                Ok(())
            } else {
                Err(format!("{:#}\n{log}", h["fleet"]))
            }
        },
    )
    .await;
    let receiver = Sidecar::start_with(&["fleet", "receive"], &receiver_cfg);
    eventually(
        "the fleet caught up through the receiver",
        Duration::from_secs(180),
        async || {
            let n = fleet_backups()?;
            if n == backups_before + 1 {
                Ok(())
            } else {
                let fleet_lines: Vec<String> = sidecar
                    .log_text()
                    .lines()
                    .filter(|l| l.contains("fleet"))
                    .map(str::to_owned)
                    .collect();
                Err(format!(
                    "{n} backups in the fleet, {backups_before} before\n{}\n{}",
                    fleet_lines.join("\n"),
                    receiver.log_text()
                ))
            }
        },
    )
    .await;
    assert_no_duplicates(&fleet);
    sidecar.stop();

    // The same rows: the stopped sidecar's catalog published once more
    // over HTTP, and once over a direct connection as another instance
    // (same labels, same health row): every column but `instance` agrees.
    let config = Arc::new(Config::load(&cfg).expect("the sidecar's config"));
    let http = config.fleet.clone().expect("[fleet]");
    publish_once(&repo, &config, http.clone()).await;
    let direct = FleetConfig {
        kind: FleetKind::Postgres,
        url: format!(
            "host={} port={} user=pitr_p dbname=fleet",
            fleet.host(),
            fleet.port()
        ),
        token: None,
        instance: "pg-side".into(),
        ..http
    };
    publish_once(&repo, &config, direct).await;
    let over_http = rows_of(&fleet, "http-side");
    assert!(over_http.contains("\"kind\": \"postgres\""), "{over_http}");
    assert_eq!(over_http, rows_of(&fleet, "pg-side"));
    receiver.stop();
}

/// A receiver with its own certificate (`receive_tls_cert_file`,
/// `receive_tls_key_file`, made by the openssl CLI) serves https only: a
/// sidecar that does not trust its CA is refused by the handshake and
/// says so in its log, one given the CA (`ca_file`) publishes through it,
/// and a plain http request gets no HTTP answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_its_own_certificate_serves_https_to_sidecars_that_trust_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet_database(
        dir.path(),
        "CREATE ROLE pitr_h LOGIN IN ROLE pitr_fleet_writer; \
         CREATE ROLE fleet_receiver LOGIN IN ROLE pitr_fleet_reader; \
         GRANT pitr_h TO fleet_receiver; \
         CREATE ROLE fleet_reader LOGIN IN ROLE pitr_fleet_reader; \
         INSERT INTO pitr_fleet.instance_roles VALUES ('pitr_h', 'https-side')",
    );
    let reader = reader_config(dir.path(), "reader.toml", &fleet, "fleet_reader");
    let reader_s = reader.to_str().expect("utf-8 path");
    // The CA and the receiver's certificate (for `localhost`), in a
    // directory the openssl CLI may write as the PostgreSQL user.
    let certs = fleet.dir().join("certs");
    let made = crate::support::run_as_pg_user(&mut std::process::Command::new("mkdir"))
        .arg(&certs)
        .status()
        .expect("mkdir");
    assert!(made.success(), "mkdir {}", certs.display());
    crate::support::tls::make_ca(&certs, "ca");
    crate::support::tls::make_server_cert(&certs);

    let r = receiver(
        dir.path(),
        &fleet,
        &format!(
            "pitr_h {}\n",
            hex::encode(Sha256::digest(TOKEN_H.as_bytes()))
        ),
        &format!(
            "receive_tls_cert_file = \"{}\"\nreceive_tls_key_file = \"{}\"\n",
            certs.join("server.crt").display(),
            certs.join("server.key").display(),
        ),
    );
    let rport = r.port;
    let receiver = Sidecar::start_with(&["fleet", "receive"], &r.config);
    let ca = std::fs::read(certs.join("ca.crt")).expect("read the CA");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("a PEM certificate"))
        .build()
        .expect("client");
    let url = format!("https://localhost:{rport}/v1/instance?name=https-side");
    let status = eventually(
        "the receiver answers over https",
        Duration::from_secs(60),
        async || {
            let r = trusting
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_err(|e| format!("{e:?}\n{}", receiver.log_text()))?;
            Ok::<_, String>(r.status().as_u16())
        },
    )
    .await;
    assert_eq!(status, 401, "no token");
    assert!(
        receiver
            .log_text()
            .contains("listening on https://127.0.0.1:"),
        "{}",
        receiver.log_text()
    );
    let plain = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{rport}/v1/instance?name=https-side"
        ))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err(), "plain http got an answer: {plain:?}");

    // A sidecar (an SQLite source) pointed at the receiver.
    let token_file = dir.path().join("token");
    write(&token_file, &format!("{TOKEN_H}\n"));
    let repo = TestRepo::new().await;
    let db = repo.dir.path().join("app.db");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)"))
        .expect("write the SQLite file");
    let config_with = |extra: &str| {
        let cfg = repo.write_config(&[]);
        crate::sqlite::add_sqlite(&cfg, "app", &db, "");
        let mut text = std::fs::read_to_string(&cfg).expect("read config");
        text.push_str(&format!(
            "\n[fleet]\nkind = \"http\"\nurl = \"https://localhost:{rport}\"\n\
             token_file = \"{}\"\ninstance = \"https-side\"\npublish_interval = \"1s\"\n{extra}",
            token_file.display()
        ));
        write(&cfg, &text);
        cfg
    };

    // Without the CA: the handshake fails, and the log says why.
    let sidecar = Sidecar::start(&config_with(""));
    eventually(
        "the sidecar refuses the receiver's certificate",
        Duration::from_secs(60),
        async || {
            let log = sidecar.log_text();
            if log.contains("fleet publish failed") && log.contains("certificate") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
    sidecar.stop();
    let listed = json_of(&["fleet", "list", "--json", "-c", reader_s]).expect("fleet list");
    assert!(
        entry(&listed, "https-side", "app").is_none(),
        "published without trusting the receiver: {listed:#}"
    );

    // With the CA: it publishes.
    let ca_file = format!("ca_file = \"{}\"\n", certs.join("ca.crt").display());
    let sidecar = Sidecar::start(&config_with(&ca_file));
    eventually(
        "the sidecar publishes over https",
        Duration::from_secs(60),
        async || {
            let list = json_of(&["fleet", "list", "--json", "-c", reader_s])?;
            entry(&list, "https-side", "app")
                .map(|_| ())
                .ok_or_else(|| format!("{list:#}\n{}", sidecar.log_text()))
        },
    )
    .await;
    sidecar.stop();
}
