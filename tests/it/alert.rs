//! Alerts against real receivers on loopback: an HTTP webhook receiver
//! (axum) and an SMTP server (aiosmtpd). Transitions, payloads per kind,
//! reminders, retries, refusals; `pitr check` on alert channels.

use std::process::Output;
use std::time::{Duration, Instant};

use pitr::backoff::Backoff;
use pitr::config::{AlertConfig, AlertKind};
use pitr::sidecar::alert::Alerter;
use pitr::sidecar::health::Check;

use crate::support::{SmtpServer, WebhookReceiver, pitr};

const WAIT: Duration = Duration::from_secs(30);

/// Short waits between attempts so retry tests take about a second.
fn quick_retry(attempts: usize) -> Backoff {
    Backoff::forever(Duration::from_millis(50), Duration::from_millis(200)).times(attempts - 1)
}

fn channel(name: &str, kind: AlertKind, renotify: Option<Duration>) -> AlertConfig {
    AlertConfig {
        name: name.to_owned(),
        kind,
        renotify,
    }
}

fn stream(failing: bool) -> Check {
    Check {
        id: "postgres/main/stream".to_owned(),
        database: Some("main".to_owned()),
        destination: None,
        failing,
        summary: if failing {
            "postgres main: no WAL acknowledged for 5 min; check that the server is up".to_owned()
        } else {
            "postgres main: streaming".to_owned()
        },
    }
}

fn dest(failing: bool) -> Check {
    Check {
        id: "destination/s3/down".to_owned(),
        database: None,
        destination: Some("s3".to_owned()),
        failing,
        summary: "destination s3: unreachable for 10 min".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_alert_per_transition_none_while_it_persists_one_recovery() {
    let rx = WebhookReceiver::start().await;
    let alerter = Alerter::with_retry(
        &[
            channel(
                "slack",
                AlertKind::Slack {
                    url: rx.url("/slack"),
                },
                None,
            ),
            channel(
                "discord",
                AlertKind::Discord {
                    url: rx.url("/discord"),
                },
                None,
            ),
            channel(
                "hook",
                AlertKind::Webhook {
                    url: rx.url("/hook"),
                },
                None,
            ),
        ],
        "db1.example.com",
        quick_retry(3),
    );

    // First seen OK: nothing.
    alerter.observe(&[stream(false), dest(false)]);
    assert!(alerter.flush(WAIT).await);
    assert!(rx.received().is_empty(), "{:?}", rx.received());

    // Failing: one alert per channel, and none while it persists.
    alerter.observe(&[stream(true), dest(false)]);
    for _ in 0..20 {
        alerter.observe(&[stream(true), dest(false)]);
    }
    assert!(alerter.flush(WAIT).await);
    let hook = rx.accepted("/hook");
    assert_eq!(hook.len(), 1, "{hook:?}");
    let a = &hook[0];
    assert_eq!(a["event"], "failing");
    assert_eq!(a["id"], "postgres/main/stream");
    assert_eq!(a["database"], "main");
    assert!(a["destination"].is_null());
    assert_eq!(a["summary"], stream(true).summary);
    assert_eq!(a["instance"], "db1.example.com");
    let since: jiff::Timestamp = a["since"].as_str().unwrap().parse().expect("RFC 3339");
    let time: jiff::Timestamp = a["time"].as_str().unwrap().parse().expect("RFC 3339");
    assert_eq!(since, time, "since is when it started failing: now");

    let slack = rx.accepted("/slack");
    assert_eq!(slack.len(), 1, "{slack:?}");
    let text = slack[0]["text"].as_str().expect("slack text");
    assert!(
        text.starts_with("[pitr] FAILING: postgres main: no WAL acknowledged"),
        "{text}"
    );
    assert!(text.contains("instance: db1.example.com"), "{text}");
    assert!(text.contains("id: postgres/main/stream"), "{text}");

    let discord = rx.accepted("/discord");
    assert_eq!(discord.len(), 1, "{discord:?}");
    let content = discord[0]["content"].as_str().expect("discord content");
    assert!(content.starts_with("[pitr] FAILING: "), "{content}");
    assert!(content.chars().count() <= 2000);

    // A second condition fails: its own alert, not a repeat of the first.
    alerter.observe(&[stream(true), dest(true)]);
    assert!(alerter.flush(WAIT).await);
    let hook = rx.accepted("/hook");
    assert_eq!(hook.len(), 2, "{hook:?}");
    assert_eq!(hook[1]["id"], "destination/s3/down");
    assert_eq!(hook[1]["destination"], "s3");
    assert!(hook[1]["database"].is_null());

    // Cleared: one recovery notice, since = when it began failing.
    alerter.observe(&[stream(false), dest(true)]);
    alerter.observe(&[stream(false), dest(true)]);
    assert!(alerter.flush(WAIT).await);
    let hook = rx.accepted("/hook");
    assert_eq!(hook.len(), 3, "{hook:?}");
    let r = &hook[2];
    assert_eq!(r["event"], "recovered");
    assert_eq!(r["id"], "postgres/main/stream");
    assert_eq!(r["summary"], "postgres main: streaming");
    assert_eq!(r["was"], stream(true).summary);
    assert_eq!(r["since"], a["since"]);
    let slack = rx.accepted("/slack");
    assert_eq!(slack.len(), 3);
    assert!(
        slack[2]["text"]
            .as_str()
            .unwrap()
            .starts_with("[pitr] RECOVERED: postgres main: streaming"),
        "{slack:?}"
    );
    assert_eq!(rx.accepted("/discord").len(), 3);

    for s in alerter.channels() {
        assert_eq!(s.delivered, 3, "{s:?}");
        assert_eq!(s.failed, 0, "{s:?}");
        assert_eq!(s.pending, 0, "{s:?}");
        assert!(s.last_success.is_some() && s.last_error.is_none(), "{s:?}");
    }
    let kinds: Vec<_> = alerter.channels().iter().map(|s| s.kind).collect();
    assert_eq!(kinds, ["slack", "discord", "webhook"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn renotify_sends_reminders_only_on_channels_that_ask() {
    let rx = WebhookReceiver::start().await;
    let alerter = Alerter::with_retry(
        &[
            channel(
                "often",
                AlertKind::Webhook {
                    url: rx.url("/often"),
                },
                Some(Duration::from_secs(1)),
            ),
            channel(
                "once",
                AlertKind::Webhook {
                    url: rx.url("/once"),
                },
                None,
            ),
        ],
        "h",
        quick_retry(3),
    );
    alerter.observe(&[stream(true)]);
    // Keep observing the persisting failure until two reminders came
    // (bounded: the interval is 1 s).
    let deadline = Instant::now() + WAIT;
    while rx.accepted("/often").len() < 3 && Instant::now() < deadline {
        alerter.observe(&[stream(true)]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(alerter.flush(WAIT).await);
    let often = rx.accepted("/often");
    assert!(often.len() >= 3, "{often:?}");
    assert_eq!(often[0]["event"], "failing");
    for r in &often[1..] {
        assert_eq!(r["event"], "reminder", "{often:?}");
        assert_eq!(r["since"], often[0]["since"], "reminders keep since");
    }
    let once = rx.accepted("/once");
    assert_eq!(once.len(), 1, "no reminders without renotify: {once:?}");

    alerter.observe(&[stream(false)]);
    assert!(alerter.flush(WAIT).await);
    let n = rx.accepted("/often").len();
    assert_eq!(rx.accepted("/often")[n - 1]["event"], "recovered");
    assert_eq!(rx.accepted("/once")[1]["event"], "recovered");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_rate_limits_are_retried_until_delivered() {
    let rx = WebhookReceiver::start().await;
    rx.answer_next(&[500, 429, 503]);
    let alerter = Alerter::with_retry(
        &[channel(
            "hook",
            AlertKind::Webhook {
                url: rx.url("/hook"),
            },
            None,
        )],
        "h",
        quick_retry(5),
    );
    alerter.observe(&[stream(true)]);
    assert!(alerter.flush(WAIT).await);
    let statuses: Vec<_> = rx.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 429, 503, 200]);
    // The same alert each time.
    assert!(rx.received().iter().all(|r| r.body["event"] == "failing"));
    let s = &alerter.channels()[0];
    assert_eq!((s.delivered, s.failed), (1, 0), "{s:?}");
    assert!(s.last_success.is_some());
    // The trouble stays visible after the success.
    let e = s.last_error.as_ref().expect("last error");
    assert!(e.message.contains("HTTP 503"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_webhook_is_not_retried_and_shows_in_channels() {
    let rx = WebhookReceiver::start().await;
    rx.answer_next(&[404]);
    let alerter = Alerter::with_retry(
        &[channel(
            "hook",
            AlertKind::Webhook {
                url: rx.url("/hook?token=secret"),
            },
            None,
        )],
        "h",
        quick_retry(5),
    );
    alerter.observe(&[stream(true)]);
    assert!(alerter.flush(WAIT).await);
    assert_eq!(rx.received().len(), 1, "not retried: {:?}", rx.received());
    let s = &alerter.channels()[0];
    assert_eq!((s.delivered, s.failed), (0, 1), "{s:?}");
    assert!(s.last_success.is_none());
    let e = s.last_error.as_ref().expect("last error").message.clone();
    assert!(
        e.contains("\"hook\"") && e.contains("refused") && e.contains("HTTP 404"),
        "{e}"
    );
    assert!(e.contains(&rx.url("")) && !e.contains("secret"), "{e}");

    // The channel keeps working: the recovery goes through.
    alerter.observe(&[stream(false)]);
    assert!(alerter.flush(WAIT).await);
    let s = &alerter.channels()[0];
    assert_eq!((s.delivered, s.failed), (1, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_channel_gives_up_and_does_not_hold_up_the_others() {
    let rx = WebhookReceiver::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let alerter = Alerter::with_retry(
        &[
            channel(
                "dead",
                AlertKind::Slack {
                    url: format!("http://{closed}/services/secret-token"),
                },
                None,
            ),
            channel(
                "hook",
                AlertKind::Webhook {
                    url: rx.url("/hook"),
                },
                None,
            ),
        ],
        "h",
        Backoff::forever(Duration::from_millis(200), Duration::from_millis(400)).times(2),
    );
    alerter.observe(&[stream(true)]);
    // The live channel's alert arrives while the dead one is still retrying.
    assert_eq!(rx.wait_accepted("/hook", 1, WAIT).await.len(), 1);
    assert!(alerter.flush(WAIT).await);
    let dead = &alerter.channels()[0];
    assert_eq!((dead.delivered, dead.failed), (0, 1), "{dead:?}");
    let e = &dead.last_error.as_ref().expect("error").message;
    assert!(
        e.contains("\"dead\"") && e.contains("cannot reach") && e.contains("gave up after 3"),
        "{e}"
    );
    assert!(!e.contains("secret-token"), "the URL is a secret: {e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn email_is_delivered_with_subject_sender_recipients_and_fields() {
    let smtp = SmtpServer::start();
    let alerter = Alerter::with_retry(
        &[channel(
            "mail",
            AlertKind::Email {
                smtp_url: format!("smtp://127.0.0.1:{}?tls=none", smtp.port()),
                from: "pitr <pitr@example.com>".to_owned(),
                to: vec![
                    "oncall@example.com".to_owned(),
                    "dba@example.com".to_owned(),
                ],
            },
            None,
        )],
        "db1.example.com",
        quick_retry(3),
    );
    alerter.observe(&[dest(true)]);
    assert!(alerter.flush(WAIT).await);
    let mails = smtp.wait_messages(1, WAIT);
    assert_eq!(mails.len(), 1, "{:?}", alerter.channels());
    let m = &mails[0];
    assert!(
        m.contains("Subject: [pitr] FAILING: destination s3: unreachable for 10 min"),
        "{m}"
    );
    assert!(m.contains("From: pitr <pitr@example.com>"), "{m}");
    assert!(m.contains("To: oncall@example.com, dba@example.com"), "{m}");
    assert!(m.contains("X-MailFrom: pitr@example.com"), "{m}");
    assert!(
        m.contains("X-RcptTo: oncall@example.com, dba@example.com"),
        "{m}"
    );
    assert!(m.contains("Content-Type: text/plain"), "{m}");
    for line in [
        "event: failing",
        "id: destination/s3/down",
        "destination: s3",
        "summary: destination s3: unreachable for 10 min",
        "instance: db1.example.com",
    ] {
        assert!(m.contains(line), "{line:?} in {m}");
    }
    assert!(!m.contains("database:"), "{m}");

    alerter.observe(&[dest(false)]);
    assert!(alerter.flush(WAIT).await);
    let mails = smtp.wait_messages(2, WAIT);
    assert_eq!(mails.len(), 2);
    let recovered = mails
        .iter()
        .find(|m| m.contains("Subject: [pitr] RECOVERED: "))
        .expect("a recovery mail");
    assert!(recovered.contains("event: recovered"), "{recovered}");
    assert!(recovered.contains("failing since: "), "{recovered}");
    let s = &alerter.channels()[0];
    assert_eq!((s.delivered, s.failed, s.kind), (2, 0, "email"), "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_channel_talks_to_the_servers_and_sends_nothing() {
    let smtp = SmtpServer::start();
    let rx = WebhookReceiver::start().await;
    let email = |url: String| {
        channel(
            "mail",
            AlertKind::Email {
                smtp_url: url,
                from: "pitr@example.com".to_owned(),
                to: vec!["oncall@example.com".to_owned()],
            },
            None,
        )
    };

    let ok = pitr::sidecar::alert::check_channel(&email(format!(
        "smtp://127.0.0.1:{}?tls=none",
        smtp.port()
    )))
    .await
    .expect("check");
    assert!(ok.contains("answered") && ok.contains("no TLS"), "{ok}");
    let ok = pitr::sidecar::alert::check_channel(&channel(
        "hook",
        AlertKind::Discord { url: rx.url("/d") },
        None,
    ))
    .await
    .expect("check");
    assert!(ok.contains("accepts connections"), "{ok}");

    // smtp:// requires STARTTLS, which this server does not offer.
    let e =
        pitr::sidecar::alert::check_channel(&email(format!("smtp://127.0.0.1:{}", smtp.port())))
            .await
            .expect_err("no STARTTLS")
            .to_string();
    assert!(
        e.contains("\"mail\"") && e.contains("STARTTLS") && e.contains("tls=none"),
        "{e}"
    );
    let e = pitr::sidecar::alert::check_channel(&email(format!(
        "smtp://127.0.0.1:{}?tls=maybe",
        smtp.port()
    )))
    .await
    .expect_err("bad tls mode")
    .to_string();
    assert!(e.contains("tls=\"maybe\""), "{e}");

    // Nothing was sent by any check.
    assert!(smtp.messages().is_empty());
    assert!(rx.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_starttls_certificate_is_a_clear_error_and_not_retried() {
    let smtp = SmtpServer::start_with_self_signed_starttls();
    let mail = channel(
        "mail",
        AlertKind::Email {
            smtp_url: format!("smtp://127.0.0.1:{}", smtp.port()),
            from: "pitr@example.com".to_owned(),
            to: vec!["oncall@example.com".to_owned()],
        },
        None,
    );
    let e = pitr::sidecar::alert::check_channel(&mail)
        .await
        .expect_err("untrusted certificate")
        .to_string();
    assert!(
        e.contains("\"mail\"") && e.contains("TLS handshake failed") && e.contains("certificate"),
        "{e}"
    );
    let alerter = Alerter::with_retry(std::slice::from_ref(&mail), "h", quick_retry(5));
    alerter.observe(&[stream(true)]);
    assert!(alerter.flush(WAIT).await);
    let s = &alerter.channels()[0];
    assert_eq!((s.delivered, s.failed), (0, 1), "{s:?}");
    let e = &s.last_error.as_ref().expect("error").message;
    assert!(
        e.contains("TLS handshake failed") && !e.contains("gave up"),
        "{e}"
    );
    assert!(smtp.messages().is_empty());
}

/// The counters the lead's `/metrics` shows: a recorder local to this
/// thread, and a current-thread runtime so the delivery tasks run here too.
#[test]
fn deliveries_and_failures_are_counted_in_metrics() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let rx = WebhookReceiver::start().await;
            rx.answer_next(&[410]);
            let alerter = Alerter::with_retry(
                &[
                    channel(
                        "gone",
                        AlertKind::Webhook {
                            url: rx.url("/gone"),
                        },
                        None,
                    ),
                    channel(
                        "hook",
                        AlertKind::Webhook {
                            url: rx.url("/hook"),
                        },
                        None,
                    ),
                ],
                "h",
                quick_retry(3),
            );
            // The first request (to either channel) is answered 410.
            alerter.observe(&[stream(true)]);
            assert!(alerter.flush(WAIT).await);
            alerter.observe(&[stream(false)]);
            assert!(alerter.flush(WAIT).await);
            let failed: u64 = alerter.channels().iter().map(|s| s.failed).sum();
            let delivered: u64 = alerter.channels().iter().map(|s| s.delivered).sum();
            assert_eq!((failed, delivered), (1, 3), "{:?}", alerter.channels());
        })
    });
    let text = handle.render();
    let value = |line_start: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("pitr_alert") && l.contains(line_start))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(value("event=\"failing\""), 1, "{text}");
    assert_eq!(value("event=\"recovered\""), 2, "{text}");
    assert_eq!(value("pitr_alert_delivery_failures_total{"), 1, "{text}");
    assert!(text.contains("pitr_alerts_sent_total{"), "{text}");
}

// ---- `pitr check` through the binary ----

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A directory with an identity, an initialised fs destination and a config
/// whose `[[alert]]` entries are `alerts`.
fn setup(alerts: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = dir.path().join("identity.txt");
    let out = pitr(&["keygen", "--output", identity.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let config = dir.path().join("pitr.toml");
    std::fs::write(
        &config,
        format!(
            r#"[repository]
recipients = ["{recipient}"]
identity_file = "identity.txt"
state_dir = "state"

[[destination]]
name = "local"
kind = "fs"
path = "store"

[verify]
schedule = "off"

[retention]
schedule = "off"

[scrub]
schedule = "off"
{alerts}"#
        ),
    )
    .expect("write config");
    let config = config.display().to_string();
    let out = pitr(&["init", "-c", &config]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    (dir, config)
}

#[test]
fn pitr_check_reports_each_alert_channel() {
    let smtp = SmtpServer::start();
    let hook = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hook_addr = hook.local_addr().expect("addr");
    let (_dir, config) = setup(&format!(
        r#"
[[alert]]
name = "mail"
kind = "email"
smtp_url = "smtp://127.0.0.1:{}?tls=none"
from = "pitr@example.com"
to = ["oncall@example.com"]

[[alert]]
name = "hook"
kind = "webhook"
url = "http://{hook_addr}/hook/secret-token"
"#,
        smtp.port()
    ));
    let out = pitr(&["check", "-c", &config]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!(
            "alert mail (email): SMTP server smtp://127.0.0.1:{} answered (no TLS",
            smtp.port()
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "alert hook (webhook): http://{hook_addr} accepts connections"
        )),
        "{t}"
    );
    assert!(!t.contains("secret-token"), "{t}");
    assert!(smtp.messages().is_empty(), "check sends no mail");
}

#[test]
fn pitr_check_fails_naming_the_channel_and_the_smtp_server_that_refuses() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (_dir, config) = setup(&format!(
        r#"
[[alert]]
name = "oncall-mail"
kind = "email"
smtp_url = "smtp://pitr:hunter2@127.0.0.1:{port}?tls=none"
from = "pitr@example.com"
to = ["oncall@example.com"]
"#
    ));
    let out = pitr(&["check", "-c", &config]);
    let t = text(&out);
    assert_ne!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("alert oncall-mail: FAILED"), "{t}");
    assert!(
        t.contains(&format!("SMTP server smtp://127.0.0.1:{port}")),
        "names the server: {t}"
    );
    assert!(t.contains("refused"), "says what happened: {t}");
    assert!(
        t.contains("check that the server runs"),
        "says what to do: {t}"
    );
    assert!(!t.contains("hunter2"), "no password in output: {t}");
}

#[test]
fn pitr_check_refuses_an_unparsable_webhook_url_at_config_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = dir.path().join("identity.txt");
    let out = pitr(&["keygen", "--output", identity.to_str().unwrap()]);
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let config = dir.path().join("pitr.toml");
    std::fs::write(
        &config,
        format!(
            r#"[repository]
recipients = ["{recipient}"]
state_dir = "state"

[[destination]]
name = "local"
kind = "fs"
path = "store"

[[alert]]
name = "team"
kind = "slack"
url = "hooks.slack.com/services/T0/B0/xyz"
"#
        ),
    )
    .expect("write");
    let out = pitr(&["check", "-c", config.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("team") && t.contains("url"),
        "names the key: {t}"
    );
    assert!(t.contains("is not an http(s) URL"), "{t}");
    assert!(!t.contains("xyz"), "the URL is a secret: {t}");
}
