//! What the benchmarks share: reading a process's CPU time and peak RSS from
//! `/proc`, describing the machine, and rewriting their generated section of
//! `BENCHMARKS.md`. Each benchmark is its own crate (`mod common;`) and uses a
//! part of this, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod pg;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The machine-wide benchmark lock: a benchmark that measures holds it (an
/// exclusive `flock`) so that no other benchmark measures meanwhile.
pub const LOCK: &str = "/tmp/pitr-bench.lock";

/// Takes [`LOCK`], waiting for a benchmark that holds it; held until the
/// returned value is dropped.
pub fn lock() -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use anyhow::Context as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(LOCK)
        .with_context(|| format!("open {LOCK}"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("flock {LOCK}: {e}"))
}

/// Whether `cargo bench` runs benchmark `name`, and if so whether it
/// rewrites its section of BENCHMARKS.md (`--write-md` or
/// `PITR_BENCH_WRITE_MD=1`). `cargo test --all-targets` runs every
/// benchmark binary without `--bench`, and a benchmark has no place in a
/// test run: then this says so on stderr and returns `None`.
pub fn run_mode(name: &str) -> Option<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("{name}: not run by `cargo bench`; skipping (run `cargo bench --bench {name}`)");
        return None;
    }
    Some(
        args.iter().any(|a| a == "--write-md")
            || std::env::var("PITR_BENCH_WRITE_MD").is_ok_and(|v| v == "1"),
    )
}

/// The live children of process `parent`, from `/proc/*/stat` (field 4,
/// after the command name, which may hold spaces and parentheses).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Prints a benchmark's results (`md`) and, with `write_md`, rewrites its
/// section of BENCHMARKS.md (see [`write_section`]).
pub fn report(
    begin: &str,
    end: &str,
    heading: &str,
    md: &str,
    write_md: bool,
) -> anyhow::Result<()> {
    println!("{md}");
    if write_md {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        write_section(&path, begin, end, heading, md)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// MB as in MB/s and "under 128 MB": 10^6 bytes.
pub const MB: f64 = 1e6;
/// GB as in "CPU seconds per GB of WAL": 10^9 bytes.
pub const GB: f64 = 1e9;

/// CPU seconds a process used so far, all threads, user + system: fields 14
/// and 15 of `/proc/PID/stat`, in clock ticks of 1/100 s (`USER_HZ`, which
/// Linux fixes at 100 on every architecture pitr runs on). `pid` `None` is
/// this process.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(proc_path(pid, "stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A process's peak resident set size in kB (`VmHWM` in `/proc/PID/status`);
/// `pid` `None` is this process.
pub fn vm_hwm_kb(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A process's resident set size now, kB (`VmRSS`).
pub fn vm_rss_kb(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Counters of a process that tell where time goes besides computing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcCounters {
    /// Read- and write-like system calls (`syscr` + `syscw` of
    /// `/proc/PID/io`; all threads, also exited ones).
    pub rw_syscalls: u64,
    /// Context switches, voluntary and not, summed over the live threads
    /// (`/proc/PID/task/*/status`; threads that exited are not counted).
    pub context_switches: u64,
    /// Live threads.
    pub threads: u64,
}

impl ProcCounters {
    pub fn read(pid: u32) -> Option<ProcCounters> {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
        let field = |text: &str, name: &str| -> Option<u64> {
            text.lines()
                .find(|l| l.starts_with(name))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        let rw_syscalls = field(&io, "syscr:")? + field(&io, "syscw:")?;
        let (mut context_switches, mut threads) = (0, 0);
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let Ok(task) = task else { continue };
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            threads += 1;
            context_switches += field(&status, "voluntary_ctxt_switches:").unwrap_or(0)
                + field(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
        }
        Some(ProcCounters {
            rw_syscalls,
            context_switches,
            threads,
        })
    }

    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: ProcCounters) -> ProcCounters {
        ProcCounters {
            rw_syscalls: self.rw_syscalls.saturating_sub(earlier.rw_syscalls),
            context_switches: self
                .context_switches
                .saturating_sub(earlier.context_switches),
            threads: self.threads,
        }
    }
}

fn proc_path(pid: Option<u32>, file: &str) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        None => PathBuf::from(format!("/proc/self/{file}")),
    }
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The full path of a program on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// The first line of a command's output, trimmed, or "unknown".
pub fn command_line(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// nproc, CPU model, RAM, kernel, rustc; each benchmark adds its tools.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("unknown".to_owned(), |kb| {
            format!("{:.1} GiB", kb as f64 / (1u64 << 20) as f64)
        });
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        ("CPUs (nproc)".into(), nproc.to_string()),
        ("CPU model".into(), cpu),
        ("RAM".into(), ram),
        ("kernel".into(), command_line("uname", &["-sr"])),
        ("rustc".into(), command_line("rustc", &["--version"])),
    ]
}

/// `1234567` as `1 234 567`.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Parses `1073741824`, `256M`, `1G` (binary suffixes).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

pub fn file_len(path: &Path) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .len())
}

/// Total bytes of every file under `dir` (temp dirs named `.tmp` excluded).
pub fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        if entry.file_name() == ".tmp" {
            continue;
        }
        let meta = entry
            .metadata()
            .with_context(|| format!("stat {}", entry.path().display()))?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Replaces the generated section of `path` between the lines `begin` and
/// `end` with `md`, leaving everything else (other benchmarks' sections, the
/// hand-written text) as it is. When the markers are missing, appends the
/// section under `heading`.
pub fn write_section(
    path: &Path,
    begin: &str,
    end: &str,
    heading: &str,
    md: &str,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let section = format!("{begin}\n\n{md}\n{end}");
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &old[..b], &old[e + end.len()..])
        }
        _ => format!("{old}\n{heading}\n\n{section}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("write {}", path.display()))
}
