//! The one way a test waits for something to happen: poll a condition,
//! bounded in time, and on timeout panic saying what was awaited and what
//! was seen last. A sleep elsewhere in the tests lets time pass on purpose
//! (a cron minute, a retry interval); it never stands for a condition.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// The first pause between two polls; it doubles up to [`MAX_PAUSE`], so a
/// condition that holds soon is seen soon and a slow one is not polled
/// hard.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between two polls.
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Polls `f` until it gives `Ok`, for at most `timeout`, and returns what it
/// gave. `Err` is what `f` saw instead (not an error: the state so far);
/// the last one is in the panic's message when `timeout` passes (formatted
/// only then: see [`with_log`]).
pub async fn eventually<T, S: Display>(
    what: impl Display,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Result<T, S>,
) -> T {
    let start = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let seen = match f().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if start.elapsed() >= timeout {
            panic!("{what}: not within {timeout:?}; last seen:\n{seen}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// [`eventually`] for a condition checked without `async` (a file, a
/// process, a blocking client); the thread sleeps between polls.
pub fn eventually_blocking<T, S: Display>(
    what: impl Display,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, S>,
) -> T {
    let start = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let seen = match f() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if start.elapsed() >= timeout {
            panic!("{what}: not within {timeout:?}; last seen:\n{seen}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// What [`eventually`]'s condition saw (`seen`) and, when shown, `log()`
/// read at that moment: a process's log, read only if a timeout needs it.
pub fn with_log<S: Display, L: Fn() -> String>(seen: S, log: L) -> WithLog<S, L> {
    WithLog(seen, log)
}

/// See [`with_log`].
pub struct WithLog<S, L>(S, L);

impl<S: Display, L: Fn() -> String> Display for WithLog<S, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\nlog:\n{}", self.0, (self.1)())
    }
}
