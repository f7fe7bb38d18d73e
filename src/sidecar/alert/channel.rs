//! One alert channel: how it is reached (HTTP webhook or SMTP), one
//! delivery attempt, delivery with retries, its status, and the
//! connectivity check of `pitr check`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::Retryable;
use jiff::Timestamp;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::message::Notice;
use super::{AlertError, ChannelError, ChannelStatus};
use crate::backoff::Backoff;
use crate::config::url_origin;
use crate::config::{AlertConfig, AlertKind};

/// One HTTP request or SMTP session may take this long before it counts as
/// a failed (and retried) attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting (TCP, and for `pitr check` the whole probe) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of a refusing server's answer is quoted in the error.
const BODY_QUOTE_CHARS: usize = 200;

/// Which JSON a webhook channel posts.
#[derive(Debug, Clone, Copy)]
enum Format {
    Slack,
    Discord,
    Webhook,
}

/// How a channel is reached, built once from its config.
enum Transport {
    Http {
        client: reqwest::Client,
        url: String,
        format: Format,
    },
    Email {
        mailer: AsyncSmtpTransport<Tokio1Executor>,
        tls: TlsMode,
        from: Mailbox,
        to: Vec<Mailbox>,
    },
    /// The config could not be turned into a transport (e.g. an SMTP URL
    /// with an unknown `tls` mode): every delivery fails with this error,
    /// which `pitr check` reports too.
    Broken(AlertError),
}

/// A channel, its transport and its counters.
pub(crate) struct Channel {
    pub(crate) name: String,
    kind: &'static str,
    /// `scheme://host:port`, without credentials or path: safe to show.
    target: String,
    transport: Transport,
    status: Mutex<Counters>,
    /// Notices queued or being delivered.
    pub(crate) pending: AtomicUsize,
}

#[derive(Default)]
struct Counters {
    delivered: u64,
    failed: u64,
    last_success: Option<Timestamp>,
    last_error: Option<ChannelError>,
}

/// How an `smtp_url` asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    /// `smtp://`: STARTTLS, refused if the server does not offer it.
    Required,
    /// `smtp://…?tls=opportunistic`: STARTTLS when offered.
    Opportunistic,
    /// `smtp://…?tls=none`: plain text (a relay on loopback).
    None,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

impl TlsMode {
    fn describe(self) -> &'static str {
        match self {
            TlsMode::Required => "STARTTLS",
            TlsMode::Opportunistic => "STARTTLS if offered",
            TlsMode::None => "no TLS",
            TlsMode::Implicit => "implicit TLS",
        }
    }
}

/// An `smtp_url`, taken apart.
struct SmtpTarget {
    host: String,
    port: u16,
    tls: TlsMode,
    credentials: Option<Credentials>,
}

/// Undoes `%XX` escapes (user names and passwords in URLs).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
            if let Some(Ok(v)) = hex.map(|h| u8::from_str_radix(h, 16)) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SmtpTarget {
    /// Parses `smtp_url`; `err` turns a problem into the channel's error.
    fn parse(url: &str, err: impl Fn(String) -> AlertError) -> Result<SmtpTarget, AlertError> {
        let u =
            reqwest::Url::parse(url).map_err(|e| err(format!("smtp_url is not a URL ({e})")))?;
        let implicit = match u.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => {
                return Err(err(format!(
                    "smtp_url has scheme {other:?}; use smtp:// (STARTTLS) or smtps:// (TLS)"
                )));
            }
        };
        let host = u
            .host_str()
            .ok_or_else(|| err("smtp_url has no host".to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut tls = if implicit {
            TlsMode::Implicit
        } else {
            TlsMode::Required
        };
        for (k, v) in u.query_pairs() {
            match (k.as_ref(), v.as_ref(), implicit) {
                ("tls", "required", false) => tls = TlsMode::Required,
                ("tls", "opportunistic", false) => tls = TlsMode::Opportunistic,
                ("tls", "none", false) => tls = TlsMode::None,
                ("tls", _, true) => {
                    return Err(err(
                        "smtps:// is always TLS: remove ?tls=, or use smtp:// with ?tls=…"
                            .to_owned(),
                    ));
                }
                ("tls", other, false) => {
                    return Err(err(format!(
                        "smtp_url has tls={other:?}; use tls=required (the default), tls=opportunistic or tls=none"
                    )));
                }
                (other, _, _) => {
                    return Err(err(format!(
                        "smtp_url has an unknown parameter {other:?}; the only one is tls=required|opportunistic|none"
                    )));
                }
            }
        }
        let port = u.port().unwrap_or(if implicit { 465 } else { 587 });
        let credentials = if u.username().is_empty() {
            None
        } else {
            Some(Credentials::new(
                percent_decode(u.username()),
                percent_decode(u.password().unwrap_or("")),
            ))
        };
        Ok(SmtpTarget {
            host,
            port,
            tls,
            credentials,
        })
    }

    /// `smtp://host:port` with the port in effect, for messages.
    fn origin(&self) -> String {
        let scheme = if self.tls == TlsMode::Implicit {
            "smtps"
        } else {
            "smtp"
        };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    fn mailer(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
        let params = || {
            TlsParameters::new(self.host.clone())
                .map_err(|e| format!("cannot set up TLS for {}: {e}", self.host))
        };
        let tls = match self.tls {
            TlsMode::Required => Tls::Required(params()?),
            TlsMode::Opportunistic => Tls::Opportunistic(params()?),
            TlsMode::None => Tls::None,
            TlsMode::Implicit => Tls::Wrapper(params()?),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.clone())
            .port(self.port)
            .tls(tls)
            .timeout(Some(ATTEMPT_TIMEOUT));
        if let Some(c) = &self.credentials {
            b = b.credentials(c.clone());
        }
        Ok(b.build())
    }
}

/// Whether an SMTP failure is the TLS handshake (certificate, protocol):
/// lettre files most of these under "connection", but trying again will not
/// help and the hint differs.
fn smtp_tls_failed(e: &lettre::transport::smtp::Error) -> bool {
    if e.is_tls() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<tokio_rustls::rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<tokio_rustls::rustls::Error>())
            {
                return true;
            }
        }
        source = err.source();
    }
    // Whatever the wrapping, rustls says what it disliked in these words.
    let text = e.to_string();
    text.contains("peer certificate") || text.contains("HandshakeFailure")
}

/// A hint for an SMTP failure: what to do about it.
fn smtp_hint(e: &lettre::transport::smtp::Error, tls: TlsMode) -> &'static str {
    let text = e.to_string();
    if text.contains("STARTTLS") {
        "the server does not offer STARTTLS, which smtp:// requires: use a server that does, smtps:// for implicit TLS, or add ?tls=none only for a relay on loopback"
    } else if smtp_tls_failed(e) {
        "the TLS handshake failed: the server's certificate must be valid for the host name in smtp_url and signed by a public CA (WebPKI roots), and the port must speak the TLS mode of smtp_url"
    } else if e.is_permanent() {
        "the server refused: check the credentials in smtp_url and the from/to addresses"
    } else if e.is_transient() {
        "the server answered with a temporary error; try again later"
    } else if e.is_timeout() {
        "no answer in time: check host and port of smtp_url and any firewall"
    } else if tls == TlsMode::Implicit {
        "check that the server runs and that host and port of smtp_url are right (smtps:// usually means port 465)"
    } else {
        "check that the server runs and that host and port of smtp_url are right"
    }
}

impl Channel {
    /// Builds the channel; a config that cannot be used becomes a channel
    /// whose every delivery fails with the reason.
    pub(crate) fn new(c: &AlertConfig) -> Channel {
        let kind = c.kind.name();
        let (target, transport) = match &c.kind {
            AlertKind::Slack { url } | AlertKind::Discord { url } | AlertKind::Webhook { url } => {
                let format = match &c.kind {
                    AlertKind::Slack { .. } => Format::Slack,
                    AlertKind::Discord { .. } => Format::Discord,
                    _ => Format::Webhook,
                };
                let target = url_origin(url);
                let client = reqwest::Client::builder()
                    .timeout(ATTEMPT_TIMEOUT)
                    .connect_timeout(CONNECT_TIMEOUT)
                    // A redirected POST turns into a GET elsewhere: a
                    // webhook that moved is reported, not followed.
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("pitr/", env!("CARGO_PKG_VERSION")))
                    .build();
                let transport = match client {
                    Ok(client) => Transport::Http {
                        client,
                        url: url.clone(),
                        format,
                    },
                    Err(e) => Transport::Broken(AlertError::Setup {
                        channel: c.name.clone(),
                        kind,
                        message: format!("cannot set up an HTTP client: {e}"),
                    }),
                };
                (target, transport)
            }
            AlertKind::Email { smtp_url, from, to } => {
                let mut target = url_origin(smtp_url);
                let setup = |message: String| AlertError::Setup {
                    channel: c.name.clone(),
                    kind,
                    message,
                };
                let transport = (|| {
                    let t = SmtpTarget::parse(smtp_url, setup)?;
                    target = t.origin();
                    let mailer = t.mailer().map_err(setup)?;
                    let mailbox = |s: &str| {
                        s.parse::<Mailbox>()
                            .map_err(|e| setup(format!("{s:?} is not an email address ({e})")))
                    };
                    let from = mailbox(from)?;
                    let to = to.iter().map(|s| mailbox(s)).collect::<Result<_, _>>()?;
                    Ok(Transport::Email {
                        mailer,
                        tls: t.tls,
                        from,
                        to,
                    })
                })()
                .unwrap_or_else(Transport::Broken);
                (target, transport)
            }
        };
        Channel {
            name: c.name.clone(),
            kind,
            target,
            transport,
            status: Mutex::new(Counters::default()),
            pending: AtomicUsize::new(0),
        }
    }

    /// The counters for `/health`.
    pub(crate) fn status(&self) -> ChannelStatus {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        ChannelStatus {
            name: self.name.clone(),
            kind: self.kind,
            target: self.target.clone(),
            delivered: s.delivered,
            failed: s.failed,
            pending: self.pending.load(Ordering::Relaxed),
            last_success: s.last_success,
            last_error: s.last_error.clone(),
        }
    }

    fn record_error(&self, message: String, gave_up: bool) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if gave_up {
            s.failed += 1;
        }
        s.last_error = Some(ChannelError {
            time: Timestamp::now(),
            message,
        });
    }

    /// Counts a notice that was never attempted (queue full, no runtime).
    pub(crate) fn record_dropped(&self, notice: &Notice, why: &str) {
        tracing::error!(channel = %self.name, id = %notice.id, event = notice.event.as_str(), "alert not delivered: {why}");
        metrics::counter!("pitr_alert_delivery_failures_total", "channel" => self.name.clone())
            .increment(1);
        self.record_error(
            format!("{} {}: {why}", notice.event.as_str(), notice.id),
            true,
        );
    }

    /// Delivers `notice`, retrying what may succeed later, and records the
    /// outcome in the counters, the metrics and the log. Never panics.
    pub(crate) async fn deliver(&self, notice: &Notice, instance: &str, retry: &Backoff) {
        let backoff = retry.builder();
        let result = (|| self.attempt(notice, instance))
            .retry(backoff)
            .when(AlertError::is_retryable)
            // A rate-limited channel says how long to wait: wait at least that
            // (up to the longest wait), so the next try is not refused again.
            .adjust(|e, wait| match (e, wait) {
                (
                    AlertError::Status {
                        retry_after: Some(asked),
                        ..
                    },
                    Some(wait),
                ) => Some(wait.max((*asked).min(retry.max_delay))),
                (_, wait) => wait,
            })
            .notify(|e, wait| {
                tracing::warn!(
                    channel = %self.name, id = %notice.id, event = notice.event.as_str(),
                    "alert delivery failed, retrying in {:.1}s: {e}", wait.as_secs_f64()
                );
                self.record_error(format!("{e} (retrying)"), false);
            })
            .await;
        match result {
            Ok(()) => {
                tracing::info!(channel = %self.name, id = %notice.id, event = notice.event.as_str(), "alert delivered");
                metrics::counter!(
                    "pitr_alerts_sent_total",
                    "channel" => self.name.clone(),
                    "event" => notice.event.as_str()
                )
                .increment(1);
                let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                s.delivered += 1;
                s.last_success = Some(Timestamp::now());
            }
            Err(e) => {
                let tries = match retry.max_retries {
                    Some(n) if e.is_retryable() => format!(" (gave up after {} attempts)", n + 1),
                    _ => String::new(),
                };
                tracing::error!(
                    channel = %self.name, id = %notice.id, event = notice.event.as_str(),
                    "alert not delivered: {e}{tries}"
                );
                metrics::counter!("pitr_alert_delivery_failures_total", "channel" => self.name.clone())
                    .increment(1);
                self.record_error(format!("{e}{tries}"), true);
            }
        }
    }

    /// One delivery attempt.
    async fn attempt(&self, notice: &Notice, instance: &str) -> Result<(), AlertError> {
        match &self.transport {
            Transport::Broken(e) => Err(e.clone()),
            Transport::Http {
                client,
                url,
                format,
            } => {
                let body = match format {
                    Format::Slack => notice.slack(instance),
                    Format::Discord => notice.discord(instance),
                    Format::Webhook => notice.webhook(instance),
                };
                let resp = client.post(url).json(&body).send().await.map_err(|e| {
                    AlertError::Unreachable {
                        channel: self.name.clone(),
                        kind: self.kind,
                        target: self.target.clone(),
                        // reqwest puts the whole URL, token and all, in
                        // its message: only the origin may be shown.
                        message: crate::sidecar::with_causes(&e.without_url()),
                    }
                })?;
                let status = resp.status();
                if status.is_success() {
                    return Ok(());
                }
                let retry_after = crate::backoff::retry_after(resp.headers());
                let text = resp.text().await.unwrap_or_default();
                let mut detail: String = text.trim().chars().take(BODY_QUOTE_CHARS).collect();
                if !detail.is_empty() {
                    detail = format!(" ({detail})");
                }
                let code = status.as_u16();
                if status.is_server_error() || code == 429 || code == 408 {
                    Err(AlertError::Status {
                        channel: self.name.clone(),
                        kind: self.kind,
                        target: self.target.clone(),
                        status: code,
                        detail,
                        retry_after,
                    })
                } else {
                    Err(AlertError::Refused {
                        channel: self.name.clone(),
                        kind: self.kind,
                        target: self.target.clone(),
                        status: code,
                        detail,
                    })
                }
            }
            Transport::Email {
                mailer,
                tls,
                from,
                to,
            } => {
                let mut m = Message::builder()
                    .from(from.clone())
                    .subject(notice.subject())
                    .header(ContentType::TEXT_PLAIN);
                for t in to {
                    m = m.to(t.clone());
                }
                let message = m
                    .body(notice.body(instance))
                    .map_err(|e| AlertError::Setup {
                        channel: self.name.clone(),
                        kind: self.kind,
                        message: format!("cannot build the email: {e}"),
                    })?;
                mailer
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.smtp_error(&e, *tls))
            }
        }
    }

    fn smtp_error(&self, e: &lettre::transport::smtp::Error, tls: TlsMode) -> AlertError {
        AlertError::Smtp {
            channel: self.name.clone(),
            server: self.target.clone(),
            message: e.to_string(),
            hint: smtp_hint(e, tls).to_owned(),
            retryable: !(e.is_permanent() || e.is_client() || smtp_tls_failed(e)),
        }
    }
}

/// `pitr check` for one channel; see [`super::check_channel`].
pub(crate) async fn check(c: &AlertConfig) -> Result<String, AlertError> {
    let kind = c.kind.name();
    match &c.kind {
        AlertKind::Slack { url } | AlertKind::Discord { url } | AlertKind::Webhook { url } => {
            let target = url_origin(url);
            let unreachable = |message: String| AlertError::Unreachable {
                channel: c.name.clone(),
                kind,
                target: target.clone(),
                message,
            };
            let u = reqwest::Url::parse(url).map_err(|e| AlertError::Setup {
                channel: c.name.clone(),
                kind,
                message: format!("url is not a URL ({e})"),
            })?;
            let host = u
                .host_str()
                .unwrap_or("")
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = u.port_or_known_default().unwrap_or(443);
            let addrs: Vec<_> = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            .map_err(|_| unreachable(format!("resolving {host} timed out")))?
            .map_err(|e| unreachable(format!("cannot resolve {host}: {e}")))?
            .collect();
            let mut last = format!("{host} resolves to no address");
            for addr in &addrs {
                match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await
                {
                    Ok(Ok(_)) => {
                        return Ok(format!(
                            "{target} accepts connections at {addr} (nothing sent)"
                        ));
                    }
                    Ok(Err(e)) => last = format!("connecting to {addr}: {e}"),
                    Err(_) => last = format!("connecting to {addr} timed out"),
                }
            }
            Err(unreachable(last))
        }
        AlertKind::Email { smtp_url, .. } => {
            let setup = |message: String| AlertError::Setup {
                channel: c.name.clone(),
                kind,
                message,
            };
            // Builds the whole channel so a bad from/to shows here too.
            let channel = Channel::new(c);
            if let Transport::Broken(e) = &channel.transport {
                return Err(e.clone());
            }
            let t = SmtpTarget::parse(smtp_url, setup)?;
            let mailer = t.mailer().map_err(setup)?;
            let smtp_err = |e: &lettre::transport::smtp::Error| AlertError::Smtp {
                channel: c.name.clone(),
                server: t.origin(),
                message: e.to_string(),
                hint: smtp_hint(e, t.tls).to_owned(),
                retryable: false,
            };
            // Connect, EHLO, STARTTLS as configured, login if configured,
            // NOOP, QUIT: no mail is sent.
            match tokio::time::timeout(ATTEMPT_TIMEOUT + CONNECT_TIMEOUT, mailer.test_connection())
                .await
            {
                Ok(Ok(true)) => Ok(format!(
                    "SMTP server {} answered ({}{}), nothing sent",
                    t.origin(),
                    t.tls.describe(),
                    if t.credentials.is_some() {
                        ", logged in"
                    } else {
                        ", no login configured"
                    }
                )),
                Ok(Ok(false)) => Err(AlertError::Smtp {
                    channel: c.name.clone(),
                    server: t.origin(),
                    message: "the server did not answer NOOP".to_owned(),
                    hint: "check that host and port of smtp_url are an SMTP server".to_owned(),
                    retryable: false,
                }),
                Ok(Err(e)) => Err(smtp_err(&e)),
                Err(_) => Err(AlertError::Smtp {
                    channel: c.name.clone(),
                    server: t.origin(),
                    message: "no answer in time".to_owned(),
                    hint: "check host and port of smtp_url and any firewall".to_owned(),
                    retryable: false,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<SmtpTarget, String> {
        SmtpTarget::parse(url, |m| AlertError::Setup {
            channel: "c".into(),
            kind: "email",
            message: m,
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn smtp_urls() {
        let t = parse("smtp://u%40x:p%2Fw@mail.example.com").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("mail.example.com", 587, TlsMode::Required)
        );
        assert!(t.credentials.is_some());
        assert_eq!(t.origin(), "smtp://mail.example.com:587");
        let t = parse("smtps://mail.example.com").unwrap();
        assert_eq!((t.port, t.tls), (465, TlsMode::Implicit));
        let t = parse("smtp://127.0.0.1:2525?tls=none").unwrap();
        assert_eq!((t.port, t.tls), (2525, TlsMode::None));
        assert!(t.credentials.is_none());
        let t = parse("smtp://[::1]:25?tls=opportunistic").unwrap();
        assert_eq!((t.host.as_str(), t.tls), ("::1", TlsMode::Opportunistic));
        assert_eq!(t.origin(), "smtp://[::1]:25");
        let e = parse("smtp://h?tls=off").map(|_| ()).unwrap_err();
        assert!(e.contains("tls=\"off\"") && e.contains("tls=none"), "{e}");
        let e = parse("smtps://h?tls=none").map(|_| ()).unwrap_err();
        assert!(e.contains("always TLS"), "{e}");
        let e = parse("smtp://h?starttls=1").map(|_| ()).unwrap_err();
        assert!(e.contains("unknown parameter"), "{e}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b%2Fc"), "a@b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%+1é%"), "%+1é%");
    }

    #[test]
    fn origins_hide_secrets() {
        assert_eq!(
            url_origin("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com"
        );
        assert_eq!(url_origin("smtp://u:p@h:25?tls=none"), "smtp://h:25");
    }
}
