//! The job registry of `pitr run`: every part of the sidecar (the WAL
//! streams, base-backup schedules, SQLite watchers, batches, retention, the
//! scrub, test restores, the catalog refresh) is registered here once, with
//! its name, its schedule and its run function. The registry supervises
//! each (restarts with [`RESTART`] backoff, panics caught, a permanent
//! failure left failed) and hands `/health` and `/metrics` the list, with
//! each job's state, so that adding a part is one registration and nothing
//! is wired by hand.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::health::{Check, CheckFn, Job, Phase, Section, TaskCell, task_cell};
use crate::backoff::Backoff;
use crate::cron::CronSchedule;

/// How a failed part is restarted: 1 s doubling to 150 s, jitter making
/// the longest wait 5 min, for as long as pitr runs.
pub const RESTART: Backoff = Backoff::forever(Duration::from_secs(1), Duration::from_secs(150));
/// A part that ran this long before failing starts again from the first
/// delay.
const RESTART_RESET: Duration = Duration::from_secs(300);

/// When a job runs, as `/health` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// All the time (a stream, a watcher); restarted when it ends.
    Continuous,
    /// At each time of a cron expression (UTC).
    Cron(String),
    /// Every so often.
    Every(Duration),
    /// Registered but not scheduled (its section says why).
    Off,
}

impl Schedule {
    /// A cron setting: `Off` when there is none.
    pub fn of_cron(cron: Option<&CronSchedule>) -> Schedule {
        cron.map_or(Schedule::Off, |c| Schedule::Cron(c.as_str().to_owned()))
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Continuous => f.write_str("continuous"),
            Schedule::Cron(c) => write!(f, "cron {c}"),
            Schedule::Every(d) => write!(f, "every {} s", d.as_secs()),
            Schedule::Off => f.write_str("off"),
        }
    }
}

/// A check `id` from a status's own judgement (failing, summary), for
/// [`Jobs::scheduled`]: for the parts below the sidecar, which cannot name
/// its [`Check`] type.
pub fn judged<S>(id: &'static str, judge: fn(&S) -> (bool, String)) -> impl Fn(&S) -> Check {
    move |s| {
        let (failing, summary) = judge(s);
        Check::new(id.to_owned(), failing, summary)
    }
}

/// How a supervised part failed.
#[derive(Debug)]
pub enum PartError {
    /// Another start may succeed: start it again after a backoff.
    Retry(String),
    /// Nothing changes by trying again (an unsupported server, ...): the
    /// part stays failed, on `/health` and alerted, until pitr restarts.
    Permanent(String),
}

impl From<String> for PartError {
    fn from(e: String) -> PartError {
        PartError::Retry(e)
    }
}

/// What a part's run ends with: nothing (a loop that ends only when told
/// to stop) or a result.
pub trait Outcome: Send + 'static {
    /// The outcome as the supervisor judges it.
    fn into_outcome(self) -> Result<(), PartError>;
}

impl Outcome for () {
    fn into_outcome(self) -> Result<(), PartError> {
        Ok(())
    }
}

impl<E: Into<PartError> + Send + 'static> Outcome for Result<(), E> {
    fn into_outcome(self) -> Result<(), PartError> {
        self.map_err(Into::into)
    }
}

/// The signal a part is given: resolves once the sidecar stops.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The parts of one `pitr run`, registered and supervised.
pub struct Jobs {
    stop: watch::Receiver<bool>,
    tasks: JoinSet<()>,
    jobs: Vec<Job>,
    sections: Vec<(String, Section)>,
    checks: Vec<CheckFn>,
}

impl Jobs {
    /// An empty registry whose jobs stop when `stop` becomes `true`.
    pub fn new(stop: watch::Receiver<bool>) -> Jobs {
        Jobs {
            stop,
            tasks: JoinSet::new(),
            jobs: Vec::new(),
            sections: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Registers and starts the job `name` (a stable key: `retention`,
    /// `postgres/main/stream`, ...), described as `what` in the log, run
    /// by `make` (given the stop signal) and supervised. `checked_by_health`
    /// says `/health` judges this job's state itself (the stream and
    /// watcher checks); otherwise a restarting or failed job is a check of
    /// its own, `job/NAME`. Returns the job's state cell.
    pub fn add<F, Fut>(
        &mut self,
        name: &str,
        what: String,
        schedule: Schedule,
        checked_by_health: bool,
        make: F,
    ) -> TaskCell
    where
        F: FnMut(StopSignal) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Outcome,
    {
        let task = task_cell();
        self.jobs.push(Job {
            name: name.to_owned(),
            what: what.clone(),
            schedule: schedule.to_string(),
            task: task.clone(),
            checked_by_health,
        });
        self.tasks
            .spawn(supervise(what, task.clone(), self.stop.clone(), make));
        task
    }

    /// Registers a job that runs at each time of `cron` (off when `None`)
    /// and publishes its status `S` to the watch channel `run` is given:
    /// `/health` shows the status as the section `section`, and `judge`
    /// makes it a check at each evaluation.
    pub fn scheduled<S, F, Fut>(
        &mut self,
        name: &str,
        cron: Option<&CronSchedule>,
        section: impl Into<String>,
        judge: impl Fn(&S) -> Check + Send + Sync + 'static,
        mut run: F,
    ) where
        S: serde::Serialize + Default + Send + Sync + 'static,
        F: FnMut(watch::Sender<S>, StopSignal) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Outcome,
    {
        let (tx, rx) = watch::channel(S::default());
        self.publish(section, rx.clone());
        self.check(move || vec![judge(&rx.borrow())]);
        self.add(
            name,
            name.replace('-', " "),
            Schedule::of_cron(cron),
            false,
            move |stop| run(tx.clone(), stop),
        );
    }

    /// Shows `status` on `/health` as the section `section`.
    pub fn publish<S>(&mut self, section: impl Into<String>, status: watch::Receiver<S>)
    where
        S: serde::Serialize + Send + Sync + 'static,
    {
        self.section(
            section,
            Arc::new(move || serde_json::to_value(&*status.borrow()).unwrap_or_default()),
        );
    }

    /// Adds a section to `/health`.
    pub fn section(&mut self, name: impl Into<String>, f: Section) {
        self.sections.push((name.into(), f));
    }

    /// Adds checks a job's state implies (judged at each evaluation).
    pub fn check(&mut self, f: impl Fn() -> Vec<Check> + Send + Sync + 'static) {
        self.checks.push(Arc::new(f));
    }

    /// Runs `fut` beside the jobs, unsupervised (the health evaluation, the
    /// HTTP endpoint, the destination probes: loops that cannot fail), and
    /// stops it with them.
    pub fn background(&mut self, fut: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(fut);
    }

    /// What `/health` reads: the jobs, their sections and their checks.
    pub fn for_health(&self) -> (Vec<Job>, Vec<(String, Section)>, Vec<CheckFn>) {
        (
            self.jobs.clone(),
            self.sections.clone(),
            self.checks.clone(),
        )
    }

    /// Waits up to `grace` for every job to stop (the stop signal must
    /// have been sent), then abandons the rest.
    pub async fn wait_stopped(mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        remaining = self.tasks.len(),
                        "parts still running {} s after the stop signal are abandoned; WAL they had not stored stays in the replication slot",
                        grace.as_secs()
                    );
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
    }
}

/// Runs the part `make` builds until `stop` is set, starting it again
/// with [`RESTART`] backoff whenever it fails, panics or ends on its own; a
/// [`PartError::Permanent`] failure leaves it failed (state `failed`),
/// logged once. Its state goes to `cell` for `/health`.
async fn supervise<F, Fut>(what: String, cell: TaskCell, stop: watch::Receiver<bool>, mut make: F)
where
    F: FnMut(StopSignal) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Outcome,
{
    let set = |state: Phase, error: Option<String>, restart: bool| {
        if let Ok(mut t) = cell.lock() {
            t.state = state;
            t.since = Some(Timestamp::now());
            if error.is_some() {
                t.last_error = error;
            }
            if restart {
                t.restarts += 1;
            }
        }
    };
    let mut delays = RESTART.delays();
    loop {
        if *stop.borrow() {
            set(Phase::Stopped, None, false);
            return;
        }
        set(Phase::Running, None, false);
        let began = Instant::now();
        let mut part_stop = stop.clone();
        let part = make(Box::pin(async move {
            let _ = part_stop.wait_for(|s| *s).await;
        }));
        // Spawned, so that a panic is a failure of this part only.
        let outcome = tokio::spawn(part).await;
        if *stop.borrow() {
            set(Phase::Stopped, None, false);
            return;
        }
        let error = match outcome.map(Outcome::into_outcome) {
            Ok(Ok(())) => "it ended without an error".to_owned(),
            Ok(Err(PartError::Retry(e))) => e,
            Ok(Err(PartError::Permanent(e))) => {
                tracing::error!(part = %what, error = %e, "failed; not restarting: this needs a change (see the error), then a restart of pitr");
                set(Phase::Failed, Some(e), false);
                let mut stop_wait = stop.clone();
                let _ = stop_wait.wait_for(|s| *s).await;
                set(Phase::Stopped, None, false);
                return;
            }
            Err(e) if e.is_panic() => format!("it panicked: {e}"),
            Err(e) => format!("it was cancelled: {e}"),
        };
        if began.elapsed() >= RESTART_RESET {
            delays.reset();
        }
        let wait = delays.next_delay().unwrap_or(RESTART.max_delay);
        tracing::error!(part = %what, error = %error, restart_in = ?wait, "failed; restarting");
        set(Phase::Restarting, Some(error), true);
        let mut stop_wait = stop.clone();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop_wait.wait_for(|s| *s) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU32, Ordering};

    /// A registry with one job, `make(n)` for its `n`th run (from 0), and
    /// how many runs started.
    fn one_job<Fut>(
        make: impl Fn(u32) -> Fut + Send + 'static,
    ) -> (Jobs, watch::Sender<bool>, TaskCell, Arc<AtomicU32>)
    where
        Fut: Future + Send + 'static,
        Fut::Output: Outcome,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut jobs = Jobs::new(stop_rx);
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let cell = jobs.add(
            "test",
            "test part".to_owned(),
            Schedule::Continuous,
            false,
            move |_| make(counter.fetch_add(1, Ordering::SeqCst)),
        );
        (jobs, stop_tx, cell, runs)
    }

    /// Polls `done` every 50 ms for up to `within`.
    async fn wait_for(within: Duration, done: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the registry and checks that the job stopped promptly.
    async fn stop(jobs: Jobs, stop_tx: watch::Sender<bool>, cell: &TaskCell) {
        stop_tx.send(true).expect("send");
        let began = Instant::now();
        jobs.wait_stopped(Duration::from_secs(5)).await;
        assert!(began.elapsed() < Duration::from_secs(5), "stops promptly");
        assert_eq!(cell.lock().map(|t| t.state).expect("lock"), Phase::Stopped);
    }

    #[tokio::test]
    async fn a_failing_part_is_restarted_and_shown_until_stopped() {
        let (jobs, stop_tx, cell, runs) = one_job(|n| async move {
            if n == 1 {
                panic!("second run panics");
            }
            Err(format!("run {n} failed"))
        });
        // Two restarts take 1–2 s plus 2–4 s of backoff.
        wait_for(Duration::from_secs(15), || runs.load(Ordering::SeqCst) >= 3).await;
        assert!(runs.load(Ordering::SeqCst) >= 3);
        let state = cell.lock().map(|t| t.clone()).expect("lock");
        assert!(state.restarts >= 2, "{state:?}");
        assert!(state.last_error.is_some(), "{state:?}");
        stop(jobs, stop_tx, &cell).await;
    }

    #[tokio::test]
    async fn a_permanent_failure_is_shown_and_not_restarted() {
        let (jobs, stop_tx, cell, runs) = one_job(|_| async {
            Err::<(), _>(PartError::Permanent("PostgreSQL 13 is refused".into()))
        });
        let failed = || cell.lock().map(|t| t.state).expect("lock") == Phase::Failed;
        wait_for(Duration::from_secs(10), failed).await;
        // Longer than the first backoff (1 to 2 s): a retry would have run.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let state = cell.lock().map(|t| t.clone()).expect("lock");
        assert_eq!(state.state, Phase::Failed, "{state:?}");
        assert_eq!(state.restarts, 0, "{state:?}");
        assert_eq!(
            state.last_error.as_deref(),
            Some("PostgreSQL 13 is refused")
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        stop(jobs, stop_tx, &cell).await;
    }

    #[tokio::test]
    async fn the_registry_lists_each_job_with_its_schedule_and_state() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut jobs = Jobs::new(stop_rx);
        jobs.add(
            "retention",
            "retention".to_owned(),
            Schedule::Cron("0 3 * * *".to_owned()),
            false,
            |stop: StopSignal| stop,
        );
        jobs.add(
            "postgres/main/stream",
            "WAL stream".to_owned(),
            Schedule::Continuous,
            true,
            |_stop| async { Err::<(), _>(PartError::Permanent("refused".to_owned())) },
        );
        let (listed, _, _) = jobs.for_health();
        let names: Vec<(&str, &str, bool)> = listed
            .iter()
            .map(|j| (j.name.as_str(), j.schedule.as_str(), j.checked_by_health))
            .collect();
        assert_eq!(
            names,
            [
                ("retention", "cron 0 3 * * *", false),
                ("postgres/main/stream", "continuous", true)
            ]
        );
        let failed = || listed[1].task.lock().map(|t| t.state).expect("lock") == Phase::Failed;
        wait_for(Duration::from_secs(10), failed).await;
        assert!(failed(), "the permanent failure shows in the registry");
        assert_eq!(
            listed[0].task.lock().map(|t| t.state).expect("lock"),
            Phase::Running
        );
        stop_tx.send(true).expect("send");
        jobs.wait_stopped(Duration::from_secs(5)).await;
        for j in &listed {
            assert_eq!(
                j.task.lock().map(|t| t.state).expect("lock"),
                Phase::Stopped
            );
        }
    }
}
