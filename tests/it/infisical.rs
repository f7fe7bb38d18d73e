//! The `[[infisical]]` source's export against a server that answers as
//! Infisical's API reference says (`support::infisical`): login, token
//! renewal and re-login, listing across environments and folders (the API
//! does not paginate), 429 with `Retry-After`, a 500 in the middle of an
//! export, the canonical form, and that no credential or secret value
//! reaches a log line or an error.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pitr::snapshot::infisical::{Client, InfisicalError, Snapshot, export};
use tracing_subscriber::fmt::MakeWriter;

use crate::support::InfisicalServer;

const CLIENT_ID: &str = "6a2d3b4c-machine-identity";
const CLIENT_SECRET: &str = "cs-9f8e7d6c5b4a-client-secret-value";
const PROJECT: &str = "proj-1234";

/// Every log line of the test's thread (the server's included: the tests
/// run on a current-thread runtime), at every level.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture_logs() -> (LogBuf, tracing::subscriber::DefaultGuard) {
    let buf = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(buf.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

/// A server with a project of three environments, folders, tags, a
/// reference and an import.
async fn seeded() -> InfisicalServer {
    let s = InfisicalServer::start(
        CLIENT_ID,
        CLIENT_SECRET,
        PROJECT,
        &["dev", "prod", "shared"],
    )
    .await;
    s.set(
        "prod",
        "/",
        "DATABASE_URL",
        "postgres://prod-db-password-1@db/app",
        "main db",
        &["db", "critical"],
    );
    s.set("prod", "/", "API_KEY", "prod-api-key-value-2", "", &[]);
    s.set(
        "prod",
        "/payments",
        "STRIPE_KEY",
        "sk_live_value_3",
        "",
        &["payments"],
    );
    s.set("prod", "/payments/eu", "VAT_ID", "vat-value-4", "", &[]);
    s.set(
        "dev",
        "/",
        "DATABASE_URL",
        "postgres://dev-db-password-5@db/app",
        "",
        &[],
    );
    s.set(
        "dev",
        "/",
        "COPY",
        "${prod.API_KEY}",
        "a reference, kept as written",
        &[],
    );
    s.set(
        "shared",
        "/common",
        "SENTRY_DSN",
        "shared-sentry-dsn-value-6",
        "",
        &[],
    );
    s.import("prod", "shared", "/common");
    s
}

/// Every secret value, the client secret and every token issued: none
/// may appear in `text`.
fn assert_no_secret_in(server: &InfisicalServer, what: &str, text: &str) {
    let mut secrets = server.values();
    secrets.push(CLIENT_SECRET.to_owned());
    secrets.extend(server.issued_tokens());
    for s in secrets {
        assert!(
            !text.contains(&s),
            "{what} contains the secret {s:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn export_lists_every_environment_and_folder_in_canonical_order() {
    let server = seeded().await;
    let bytes = export(&server.options(&["prod", "dev"]))
        .await
        .expect("export");
    let snap = Snapshot::from_json(&bytes).expect("the export reads back");

    assert_eq!(snap.project_id, PROJECT);
    assert_eq!(snap.environments, ["dev", "prod"]);
    let rows: Vec<(&str, &str, &str, &str)> = snap
        .secrets
        .iter()
        .map(|s| {
            (
                s.environment.as_str(),
                s.path.as_str(),
                s.key.as_str(),
                s.value.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("dev", "/", "COPY", "${prod.API_KEY}"),
            (
                "dev",
                "/",
                "DATABASE_URL",
                "postgres://dev-db-password-5@db/app"
            ),
            ("prod", "/", "API_KEY", "prod-api-key-value-2"),
            (
                "prod",
                "/",
                "DATABASE_URL",
                "postgres://prod-db-password-1@db/app"
            ),
            ("prod", "/payments", "STRIPE_KEY", "sk_live_value_3"),
            ("prod", "/payments/eu", "VAT_ID", "vat-value-4"),
        ],
        "every folder beneath /, sorted by environment, path, key; the reference unexpanded"
    );
    let db = &snap.secrets[3];
    assert_eq!(db.comment, "main db");
    assert_eq!(db.tags, ["critical", "db"]);

    // The import is a reference: where it comes from, never its values.
    assert_eq!(snap.imports.len(), 1);
    assert_eq!(
        (
            snap.imports[0].environment.as_str(),
            snap.imports[0].from_environment.as_str(),
            snap.imports[0].from_path.as_str()
        ),
        ("prod", "shared", "/common")
    );
    let text = String::from_utf8(bytes).expect("utf-8");
    assert!(
        !text.contains("shared-sentry-dsn-value-6"),
        "an imported value was copied"
    );
    for volatile in ["version", "createdAt", "updatedAt", "\"id\"", "reqId"] {
        assert!(!text.contains(volatile), "{volatile} in the snapshot");
    }

    // What was asked: one call per environment (the API has no pages),
    // recursive, imports as references, references unexpanded.
    assert_eq!(server.listing_calls(), 2);
    for q in server.seen_queries() {
        assert_eq!(q["projectId"], PROJECT);
        assert_eq!(q["secretPath"], "/");
        assert_eq!(q["recursive"], "true");
        assert_eq!(q["include_imports"], "true");
        assert_eq!(q["expandSecretReferences"], "false");
        assert_eq!(q["viewSecretValue"], "true");
    }
    assert_eq!(
        server.seen_credentials(),
        [(CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())],
        "one login with the configured identity"
    );
}

#[tokio::test]
async fn an_unchanged_project_exports_the_same_bytes_and_a_change_does_not() {
    let server = seeded().await;
    let opts = server.options(&["prod", "dev"]);
    // The server answers in another order at each call.
    let first = export(&opts).await.expect("first");
    let second = export(&opts).await.expect("second");
    let third = export(&opts).await.expect("third");
    assert_eq!(
        first, second,
        "an unchanged project gives byte-identical exports"
    );
    assert_eq!(first, third);

    // Saving a value unchanged bumps Infisical's version; the snapshot does
    // not carry it.
    server.set("prod", "/", "API_KEY", "prod-api-key-value-2", "", &[]);
    assert_eq!(export(&opts).await.expect("same value"), first);

    server.set("prod", "/", "API_KEY", "prod-api-key-rotated-7", "", &[]);
    let changed = export(&opts).await.expect("changed");
    assert_ne!(changed, first, "a changed value is a new snapshot");
    let snap = Snapshot::from_json(&changed).expect("reads back");
    assert!(
        snap.secrets
            .iter()
            .any(|s| s.value == "prod-api-key-rotated-7")
    );

    server.set("dev", "/new", "ADDED", "added-value-8", "", &[]);
    assert_ne!(
        export(&opts).await.expect("added"),
        changed,
        "an added secret too"
    );
}

#[tokio::test]
async fn an_expiring_token_is_renewed_and_past_its_max_ttl_replaced_by_a_login() {
    let server = seeded().await;
    server.token_lifetime(Duration::from_secs(2), Duration::from_secs(5));
    let mut client = Client::new(&server.options(&["prod"])).expect("client");
    client.login().await.expect("login");
    assert_eq!(server.logins(), 1);

    // Within the renewal margin (a fifth of the TTL) the token is renewed
    // before it is used.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    client
        .list(PROJECT, "prod", "/")
        .await
        .expect("list after renewal");
    assert_eq!(server.renewals(), 1, "renewed, not replaced");
    assert_eq!(server.logins(), 1);

    // Renewing again would pass the max TTL: a new login instead.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    client
        .list(PROJECT, "prod", "/")
        .await
        .expect("list after re-login");
    assert_eq!(server.logins(), 2, "a new login past the max TTL");
    assert_eq!(server.renewals(), 1);
}

#[tokio::test]
async fn a_refused_token_gets_one_new_login_and_bad_credentials_an_error() {
    let (logs, _guard) = capture_logs();
    let server = seeded().await;
    let opts = server.options(&["prod"]);
    let mut client = Client::new(&opts).expect("client");
    client
        .list(PROJECT, "prod", "/")
        .await
        .expect("first list logs in");
    assert_eq!(server.logins(), 1);

    server.revoke_all_tokens();
    client
        .list(PROJECT, "prod", "/")
        .await
        .expect("a 401 leads to one new login");
    assert_eq!(server.logins(), 2);

    // The identity's secret was rotated: the next login is refused, and
    // the error says what to check.
    server.revoke_all_tokens();
    server.rotate_client_secret("a-new-client-secret-9");
    let err = client
        .list(PROJECT, "prod", "/")
        .await
        .expect_err("refused");
    assert!(
        matches!(err, InfisicalError::Login { status: 401, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    for part in [
        "[[infisical]] secrets",
        "login",
        "401",
        "client_id",
        "client_secret_file",
    ] {
        assert!(msg.contains(part), "{part:?} missing: {msg}");
    }
    assert_no_secret_in(&server, "the error", &format!("{msg} {err:?}"));
    assert_no_secret_in(&server, "the log", &logs.text());
}

#[tokio::test]
async fn a_429_is_retried_after_the_wait_it_asks_for() {
    let server = seeded().await;
    let opts = server.options(&["prod"]);
    server.rate_limit_next(2, 1);
    let started = Instant::now();
    let bytes = export(&opts).await.expect("succeeds once the limit passes");
    let took = started.elapsed();
    assert_eq!(server.answered_429(), 2);
    assert!(
        took >= Duration::from_secs(2),
        "two Retry-After: 1 honoured, not the 10 ms backoff: {took:?}"
    );
    server.rate_limit_next(0, 0);
    assert_eq!(
        bytes,
        export(&opts).await.expect("again"),
        "the same export"
    );

    // More 429s than retries: an error naming the rate limit.
    server.rate_limit_next(10, 0);
    let err = export(&opts).await.expect_err("gives up");
    assert!(
        matches!(err, InfisicalError::Status { status: 429, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("rate limit"), "{err}");
}

#[tokio::test]
async fn a_500_mid_export_is_an_error_and_no_bytes() {
    let (logs, _guard) = capture_logs();
    let server = seeded().await;
    let opts = server.options(&["dev", "prod"]);
    // The first environment lists; every try of the second fails (the
    // first try and its three retries).
    server.fail_listing_calls(2..=5);
    let result = export(&opts).await;
    let err = result.expect_err("a partial export is no export");
    assert!(
        matches!(err, InfisicalError::Status { status: 500, .. }),
        "{err:?}"
    );
    assert_eq!(
        server.listing_calls(),
        5,
        "the second environment was tried four times"
    );
    let msg = err.to_string();
    assert!(msg.contains("500") && msg.contains("retried"), "{msg}");
    assert_no_secret_in(&server, "the error", &format!("{msg} {err:?}"));

    // One 500 alone is retried and the export completes.
    server.fail_listing_calls([7]);
    let bytes = export(&opts).await.expect("a single 500 is retried");
    assert_eq!(Snapshot::from_json(&bytes).expect("reads").secrets.len(), 6);
    assert_no_secret_in(&server, "the log", &logs.text());
}

#[tokio::test]
async fn a_slow_export_times_out_and_a_huge_answer_is_refused() {
    let server = seeded().await;
    let mut opts = server.options(&["prod"]);
    opts.entry.timeout = Duration::from_secs(1);
    server.rate_limit_next(1, 5);
    let err = export(&opts).await.expect_err("times out");
    assert!(
        matches!(err, InfisicalError::Timeout { seconds: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no snapshot was taken"), "{err}");

    server.rate_limit_next(0, 0);
    let mut opts = server.options(&["prod"]);
    opts.max_response_bytes = 512;
    let err = export(&opts).await.expect_err("too large");
    assert!(
        matches!(err, InfisicalError::TooLarge { limit: 512, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn no_credential_or_secret_value_reaches_a_log_line_or_an_error() {
    let (logs, _guard) = capture_logs();
    let server = seeded().await;
    server.token_lifetime(Duration::from_secs(1), Duration::from_secs(60));
    let opts = server.options(&["dev", "prod", "shared"]);
    let mut errors = Vec::new();

    // Success, with a renewal, retries after 429 and 500.
    export(&opts).await.expect("plain");
    server.rate_limit_next(1, 1);
    server.fail_listing_calls([5]);
    export(&opts).await.expect("with a 429 and a 500");
    let mut client = Client::new(&opts).expect("client");
    client.login().await.expect("login");
    tokio::time::sleep(Duration::from_millis(900)).await;
    client.list(PROJECT, "prod", "/").await.expect("renewed");
    assert!(server.renewals() >= 1);
    errors.push(format!("{client:?} {opts:?}"));

    // Failures of every kind.
    // Calls 1-8 so far; the next export lists dev (9), then prod fails
    // through its retries (10-13).
    server.fail_listing_calls(10..=13);
    errors.push(format!("{:?}", export(&opts).await.expect_err("500s")));
    let mut wrong = opts.clone();
    wrong.entry.project_id = "no-such-project".to_owned();
    errors.push(format!("{:?}", export(&wrong).await.expect_err("404")));
    let mut wrong = opts.clone();
    wrong.entry.client_secret = "wrong-secret".to_owned();
    errors.push(format!("{:?}", export(&wrong).await.expect_err("401")));
    server.rate_limit_next(10, 0);
    errors.push(format!("{:?}", export(&opts).await.expect_err("429s")));
    server.rate_limit_next(0, 0);

    for e in &errors {
        assert_no_secret_in(&server, "an error", e);
    }
    let log = logs.text();
    assert!(
        log.contains("exported the Infisical project"),
        "the capture works:\n{log}"
    );
    assert!(log.contains("retrying"), "retries are logged:\n{log}");
    assert_no_secret_in(&server, "the log", &log);
}
