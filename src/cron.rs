//! Cron schedules (UTC) and waiting for their next time: what every
//! scheduled part of `pitr run` (base backups, retention, test restores,
//! scrubs) and the config share. A leaf: it imports no other module.

use std::time::Duration;

use jiff::Timestamp;

/// A cron expression in UTC: five fields (minute hour day-of-month month
/// day-of-week), or six with seconds first. Parsed once, at config load.
#[derive(Clone)]
pub struct CronSchedule {
    text: String,
    cron: croner::Cron,
}

/// A cron expression that does not parse, or never fires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

impl CronSchedule {
    /// Parses `text` (whitespace between fields normalised). An expression
    /// that matches no time in the future (`0 0 30 2 *`) is refused too: it
    /// would silently take no backup.
    pub fn parse(text: &str) -> Result<CronSchedule, CronError> {
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            // Six fields mean seconds first, never a year last.
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&text)
            .map_err(|e| CronError(e.to_string()))?;
        let schedule = CronSchedule { text, cron };
        if schedule.next_after(Timestamp::now()).is_none() {
            return Err(CronError("it matches no time in the future".to_owned()));
        }
        Ok(schedule)
    }

    /// The expression as written (fields separated by one space).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time strictly after `t` that the expression matches, in
    /// UTC; `None` when there is none within croner's search limit.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let from = t.to_zoned(jiff::tz::TimeZone::UTC);
        self.cron
            .find_next_occurrence(&from, false)
            .ok()
            .map(|z| z.timestamp())
    }
}

impl CronSchedule {
    /// The time between the expression's next two times from now: how
    /// often it fires, for "older than one interval" rules.
    pub fn interval(&self) -> Option<Duration> {
        let first = self.next_after(Timestamp::now())?;
        let second = self.next_after(first)?;
        second.duration_since(first).try_into().ok()
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CronSchedule {}

impl std::fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CronSchedule({:?})", self.text)
    }
}

impl std::fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Waits for the next time of `cron`, after telling `announce` when that
/// is; `false` when `shutdown` fired first. A schedule with no future time
/// is warned about (as `what`) and waits for `shutdown`. The wait is cut
/// into steps of at most 30 s, so a wall clock that jumps costs little.
/// The scheduled parts of `pitr run` (retention, scrub) loop on it.
pub async fn wait_for_next<F: Future<Output = ()>>(
    cron: &CronSchedule,
    what: &str,
    shutdown: &mut std::pin::Pin<&mut F>,
    announce: impl FnOnce(Timestamp),
) -> bool {
    let Some(next) = cron.next_after(Timestamp::now()) else {
        tracing::warn!(schedule = %cron, "the {what} schedule matches no future time; it stops");
        shutdown.as_mut().await;
        return false;
    };
    announce(next);
    loop {
        let left: Duration = next
            .duration_since(Timestamp::now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        if left.is_zero() {
            return true;
        }
        tokio::select! {
            () = shutdown.as_mut() => return false,
            () = tokio::time::sleep(left.min(Duration::from_secs(30))) => {}
        }
    }
}

/// Runs `job` at every time of `cron` until `shutdown` fires: the wait of
/// [`wait_for_next`] (telling `announce` each next time), then the job,
/// given the time it started; a job still running when `shutdown` fires is
/// dropped. The one loop behind every scheduled part of `pitr run` (scrub,
/// retention, test restores), so each says only what its run does.
pub async fn every<J, Fut>(
    cron: &CronSchedule,
    what: &str,
    shutdown: impl Future<Output = ()>,
    mut announce: impl FnMut(Timestamp),
    mut job: J,
) where
    J: FnMut(Timestamp) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if !wait_for_next(cron, what, &mut shutdown, &mut announce).await {
            return;
        }
        let started = Timestamp::now();
        tokio::select! {
            () = shutdown.as_mut() => return,
            () = job(started) => {}
        }
    }
}
