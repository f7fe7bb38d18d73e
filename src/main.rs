//! The `pitr` command line: parses arguments, loads the config, runs one
//! command and maps its outcome to an exit code. Everything else lives in the
//! library. This file starts the process (allocator, logging, runtime,
//! signals); the commands are in `cli`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::args::{Cli, Command, LogFormat};
use cli::exit::{EXIT_FAILURE, Exit, exit_code};

fn main() -> ExitCode {
    tune_allocator();
    let args = Cli::parse();
    // PostgreSQL runs this once per WAL file while replay waits: no logging
    // set-up, no runtime threads, just the round trip.
    if let Command::RestoreFetch { socket, file, path } = &args.command {
        return ExitCode::from(pitr::restore::fetch_client(socket, file, path));
    }
    // The sidecar reports what it does; one-shot commands stay quiet unless
    // something is wrong.
    let level = if matches!(args.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(args.log_format, level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // Commands that start a PostgreSQL server on restored data stop it and
    // remove what they wrote when interrupted; the others keep the default
    // (wal-fetch in particular: PostgreSQL reads a restore_command killed by
    // SIGTERM as a shutdown, an exit code above 125 as a failure).
    let interruptible = matches!(
        args.command,
        Command::Restore { .. } | Command::Verify { .. } | Command::Demo
    );
    let outcome = runtime.block_on(async {
        if interruptible {
            until_interrupted(cli::run(args.command)).await
        } else {
            cli::run(args.command).await
        }
    });
    let code = match &outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", pitr::sidecar::with_causes(err.as_ref()));
            ExitCode::from(exit_code(err))
        }
    };
    // An interrupted command may have left a read blocked in the blocking
    // pool (a hung NFS mount, a destination that stopped answering): what
    // matters is done, and the exit must not wait for it.
    let interrupted = outcome.as_ref().is_err_and(|e| {
        e.chain()
            .any(|c| matches!(c.downcast_ref::<Exit>(), Some(Exit::Interrupted(_))))
    });
    if interrupted {
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    }
    code
}

/// Bounded memory (invariant 7) under glibc, without paying for it in page
/// faults. glibc's default lets the mmap threshold climb to 32 MiB once a
/// large buffer is freed, after which pack buffers (16 MiB) come from
/// per-thread arenas that keep freed memory resident, and it allows 8 arenas
/// per core for the blocking threads that compress chunks (peak RSS 118 MB
/// on a 1 GiB SQLite snapshot, BENCHMARKS.md `sqlite`). So the threshold is
/// fixed, two arenas at most, but just above a page-sized chunk (128 KiB of
/// data plus glibc's header): at exactly 128 KiB every chunk was a fresh
/// mmap, zero-filled on first touch and unmapped with a TLB shootdown when
/// dropped, which cost a base backup of 2.2 GB 4.3 s of kernel time out of
/// 8 (BENCHMARKS.md `basebackup`). The trim threshold keeps an arena from
/// giving its top back, and faulting it in again, after every pack.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; this runs first in
    // main, before any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 132 * 1024);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 2 * 1024 * 1024);
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PITR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let json = format == LogFormat::Json;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs `work` until SIGINT or SIGTERM, then drops it: the drop stops the
/// servers it started and removes what it half-wrote (their drop guards)
/// before pitr says so and exits.
async fn until_interrupted(work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return work.await;
    };
    let signal = tokio::select! {
        r = work => return r,
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    Err(Exit::Interrupted(signal).into())
}
