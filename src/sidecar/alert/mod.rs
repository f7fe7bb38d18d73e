//! Alerts: Slack, Discord and generic JSON webhooks, and email over SMTP.
//!
//! The health evaluation hands the [`Alerter`] its list of [`Check`]s,
//! as often as it likes; the alerter sends one alert when a condition starts
//! failing, one recovery notice when it clears, and reminders only when a
//! channel asks for them (`renotify`). Delivery runs in the background, one
//! queue per channel, with bounded retries: a channel that fails is logged,
//! counted and shown by [`Alerter::channels`], and never holds anything up.
//! See `docs/ALERTS.md`.

mod channel;
mod message;
mod state;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

pub use message::Event;

use crate::backoff::Backoff;
use crate::config::AlertConfig;
use crate::sidecar::health::Check;
use channel::Channel;
use message::Notice;
use state::Tracker;

/// Notices waiting per channel beyond which new ones are dropped (and
/// counted as failed): a channel that cannot keep up must not grow memory.
const QUEUE_CAPACITY: usize = 256;

/// How deliveries are retried: 1 s, 2 s, 4 s, … up to 60 s (jitter
/// added), 7 retries: about two minutes of outage of a chat service is
/// ridden out.
pub const DELIVERY_RETRY: Backoff =
    Backoff::forever(Duration::from_secs(1), Duration::from_secs(60)).times(7);

/// The last failure of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelError {
    /// When it happened.
    pub time: Timestamp,
    /// What failed and what to do.
    pub message: String,
}

/// One channel's state, for `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelStatus {
    /// The `[[alert]]` entry's name.
    pub name: String,
    /// `slack`, `discord`, `webhook` or `email`.
    pub kind: &'static str,
    /// `scheme://host:port` of the webhook or SMTP server (no secrets).
    pub target: String,
    /// Notices delivered.
    pub delivered: u64,
    /// Notices given up on (after retries, refused, or dropped).
    pub failed: u64,
    /// Notices queued or being delivered now.
    pub pending: usize,
    /// When a notice was last delivered.
    pub last_success: Option<Timestamp>,
    /// The last failed attempt, including ones that are being retried.
    pub last_error: Option<ChannelError>,
}

/// Why an alert could not be delivered, or a channel check failed. Every
/// message names the channel, what failed and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AlertError {
    /// The server answered 4xx (not 429/408): the URL is wrong or was
    /// revoked. Not retried.
    #[error(
        "alert channel {channel:?} ({kind}): {target} refused the alert with HTTP {status}{detail}; the webhook URL is wrong or was revoked: check url in its [[alert]] entry"
    )]
    Refused {
        /// The channel's name.
        channel: String,
        /// Its kind.
        kind: &'static str,
        /// `scheme://host:port`.
        target: String,
        /// The HTTP status.
        status: u16,
        /// The start of the server's answer, in parentheses, or empty.
        detail: String,
    },
    /// The server answered 5xx, 429 or 408: retried.
    #[error(
        "alert channel {channel:?} ({kind}): {target} answered HTTP {status}{detail}; the service has trouble or limits the rate"
    )]
    Status {
        /// The channel's name.
        channel: String,
        /// Its kind.
        kind: &'static str,
        /// `scheme://host:port`.
        target: String,
        /// The HTTP status.
        status: u16,
        /// The start of the server's answer, in parentheses, or empty.
        detail: String,
        /// The server's `Retry-After`, in seconds, if it sent one.
        retry_after: Option<Duration>,
    },
    /// No answer: DNS, connection or timeout. Retried.
    #[error(
        "alert channel {channel:?} ({kind}): cannot reach {target}: {message}; check the URL's host and port and that this machine may reach it"
    )]
    Unreachable {
        /// The channel's name.
        channel: String,
        /// Its kind.
        kind: &'static str,
        /// `scheme://host:port`.
        target: String,
        /// What failed.
        message: String,
    },
    /// The SMTP server could not be reached or refused.
    #[error("alert channel {channel:?} (email): SMTP server {server}: {message}; {hint}")]
    Smtp {
        /// The channel's name.
        channel: String,
        /// `smtp://host:port` (no credentials).
        server: String,
        /// What failed.
        message: String,
        /// What to do.
        hint: String,
        /// Whether trying again may help.
        retryable: bool,
    },
    /// The channel's config cannot be used (it passed loading but not
    /// this deeper check). Not retried.
    #[error("alert channel {channel:?} ({kind}): {message}")]
    Setup {
        /// The channel's name.
        channel: String,
        /// Its kind.
        kind: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

impl AlertError {
    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            AlertError::Status { .. } | AlertError::Unreachable { .. } => true,
            AlertError::Smtp { retryable, .. } => *retryable,
            AlertError::Refused { .. } | AlertError::Setup { .. } => false,
        }
    }
}

/// What the delivery workers share with the alerter (not the queues'
/// senders: when the alerter is dropped, the workers end).
struct Shared {
    instance: String,
    retry: Backoff,
    /// Notices queued or in delivery, over all channels; `flush` waits for 0.
    pending: watch::Sender<usize>,
}

struct Slot {
    channel: Arc<Channel>,
    tx: mpsc::Sender<Arc<Notice>>,
    /// Taken by the worker, spawned on the first notice (so `new` needs no
    /// runtime).
    rx: Mutex<Option<mpsc::Receiver<Arc<Notice>>>>,
}

struct Inner {
    shared: Arc<Shared>,
    tracker: Mutex<Tracker>,
    slots: Vec<Slot>,
}

/// Turns condition changes into notices on every configured channel.
/// Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Alerter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("instance", &self.inner.shared.instance)
            .field("channels", &self.inner.slots.len())
            .finish()
    }
}

impl Alerter {
    /// An alerter for `channels`; `instance` (host name or config path)
    /// is shown in every notice so the reader knows which sidecar speaks.
    pub fn new(channels: &[AlertConfig], instance: &str) -> Alerter {
        Alerter::with_retry(channels, instance, DELIVERY_RETRY)
    }

    /// [`Alerter::new`] with a retry policy of its own (tests use short
    /// delays).
    pub fn with_retry(channels: &[AlertConfig], instance: &str, retry: Backoff) -> Alerter {
        let slots = channels
            .iter()
            .map(|c| {
                let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
                Slot {
                    channel: Arc::new(Channel::new(c)),
                    tx,
                    rx: Mutex::new(Some(rx)),
                }
            })
            .collect();
        Alerter {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    instance: instance.to_owned(),
                    retry,
                    pending: watch::Sender::new(0),
                }),
                tracker: Mutex::new(Tracker::new(channels.iter().map(|c| c.renotify).collect())),
                slots,
            }),
        }
    }

    /// Compares with the previous state per id: newly failing → one alert;
    /// cleared → one recovery notice; still failing → nothing, unless the
    /// channel's renotify interval passed (then a reminder). A condition
    /// first seen OK sends nothing; an id that disappears is forgotten.
    /// Never blocks: deliveries run in background tasks (on the current
    /// tokio runtime) with retries, each channel independent.
    pub fn observe(&self, conditions: &[Check]) {
        self.observe_at(Timestamp::now(), conditions);
    }

    /// [`Alerter::observe`] at a given time.
    fn observe_at(&self, now: Timestamp, conditions: &[Check]) {
        let decisions = self
            .inner
            .tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(now, conditions);
        for d in decisions {
            let n = &d.notice;
            // Transitions are logged once here, whatever the channels do.
            match n.event {
                Event::Failing => {
                    tracing::warn!(id = %n.id, "condition failing: {}", n.summary)
                }
                Event::Recovered => {
                    tracing::info!(id = %n.id, "condition recovered: {}", n.summary)
                }
                Event::Reminder => {}
            }
            for i in d.channels {
                if let Some(slot) = self.inner.slots.get(i) {
                    self.enqueue(slot, d.notice.clone());
                }
            }
        }
    }

    fn enqueue(&self, slot: &Slot, notice: Arc<Notice>) {
        let shared = &self.inner.shared;
        {
            let mut rx = slot.rx.lock().unwrap_or_else(|p| p.into_inner());
            if rx.is_some() {
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        if let Some(rx) = rx.take() {
                            rt.spawn(worker(slot.channel.clone(), shared.clone(), rx));
                        }
                    }
                    Err(_) => {
                        slot.channel.record_dropped(
                            &notice,
                            "Alerter::observe was called outside a tokio runtime (a bug in pitr)",
                        );
                        return;
                    }
                }
            }
        }
        use std::sync::atomic::Ordering;
        slot.channel.pending.fetch_add(1, Ordering::Relaxed);
        shared.pending.send_modify(|n| *n += 1);
        if let Err(e) = slot.tx.try_send(notice) {
            slot.channel.pending.fetch_sub(1, Ordering::Relaxed);
            shared.pending.send_modify(|n| *n = n.saturating_sub(1));
            let (notice, why) = match e {
                mpsc::error::TrySendError::Full(n) => (
                    n,
                    format!(
                        "{QUEUE_CAPACITY} notices are already waiting for this channel; dropped"
                    ),
                ),
                mpsc::error::TrySendError::Closed(n) => {
                    (n, "the channel's delivery task ended; dropped".to_owned())
                }
            };
            slot.channel.record_dropped(&notice, &why);
        }
    }

    /// Per channel: name, kind, delivered/failed counts, last success time,
    /// last error (time, message) — shown in `/health`.
    pub fn channels(&self) -> Vec<ChannelStatus> {
        self.inner
            .slots
            .iter()
            .map(|s| s.channel.status())
            .collect()
    }

    /// Waits, at most `timeout`, until every queued notice was delivered or
    /// given up on; for shutdown and tests. True when nothing is left.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.shared.pending.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await,
            Ok(Ok(_))
        )
    }
}

/// Delivers one channel's notices in order, one at a time: a recovery
/// never overtakes its alert.
async fn worker(channel: Arc<Channel>, shared: Arc<Shared>, mut rx: mpsc::Receiver<Arc<Notice>>) {
    while let Some(notice) = rx.recv().await {
        channel
            .deliver(&notice, &shared.instance, &shared.retry)
            .await;
        channel
            .pending
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        shared.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// For `pitr check`: email → connect, EHLO, STARTTLS as configured and
/// login if configured, to the SMTP server; no mail sent. Webhooks → the
/// host resolves and accepts TCP; nothing sent. The error names the
/// channel, what failed and what to do.
pub async fn check_channel(c: &AlertConfig) -> Result<String, AlertError> {
    channel::check(c).await
}
