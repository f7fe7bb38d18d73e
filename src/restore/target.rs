//! What a restore aims at, parsed from the command line, and spelled the way
//! PostgreSQL's recovery settings want it.

use jiff::Timestamp;

use crate::pg::Lsn;

/// A restore target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Target {
    /// Every transaction committed at or before this time, none after.
    Time(Timestamp),
    /// Up to and including the record at (or first after) this position.
    Lsn(Lsn),
    /// Up to the restore point of this name (`pg_create_restore_point`).
    Name(String),
    /// Everything the repository holds.
    Latest,
}

/// Why a `--at` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// A time without a zone or offset: guessing one would restore to the
    /// wrong hour.
    #[error(
        "--at {0:?} has no time zone: write it as RFC 3339 (2026-11-23T03:00:00Z) or as \
         PostgreSQL does (2026-11-23 03:00:00+00); pitr does not guess a zone"
    )]
    NoZone(String),
    /// Not a time at all.
    #[error(
        "--at {value:?} is not a time ({why}): write it as RFC 3339 (2026-11-23T03:00:00Z) or as \
         PostgreSQL does (2026-11-23 03:00:00+00)"
    )]
    Bad {
        /// What was given.
        value: String,
        /// The parser's complaint.
        why: String,
    },
    /// Not a WAL position.
    #[error("--lsn {0:?} is not a WAL position: write it as PostgreSQL does, e.g. 0/3000060")]
    BadLsn(String),
    /// An empty restore point name.
    #[error("--name must not be empty")]
    EmptyName,
}

impl Target {
    /// The target a command line gave: exactly one of the four (clap
    /// enforces that); `None` for all means `--latest`.
    pub fn from_args(
        at: Option<&str>,
        lsn: Option<&str>,
        name: Option<&str>,
    ) -> Result<Target, TargetError> {
        if let Some(at) = at {
            return parse_time(at).map(Target::Time);
        }
        if let Some(lsn) = lsn {
            return lsn
                .trim()
                .parse()
                .map(Target::Lsn)
                .map_err(|_| TargetError::BadLsn(lsn.to_owned()));
        }
        if let Some(name) = name {
            if name.is_empty() {
                return Err(TargetError::EmptyName);
            }
            return Ok(Target::Name(name.to_owned()));
        }
        Ok(Target::Latest)
    }

    /// How the target reads in messages.
    pub fn describe(&self) -> String {
        match self {
            Target::Time(t) => format!("time {}", pg_time(*t)),
            Target::Lsn(l) => format!("WAL position {l}"),
            Target::Name(n) => format!("restore point {n:?}"),
            Target::Latest => "the latest stored WAL".to_owned(),
        }
    }
}

/// Parses a target time: RFC 3339 or PostgreSQL's output format, with a zone
/// (`Z`, `+00`, `+05:30`, `-0800`). Sub-microsecond digits are dropped, the
/// precision of PostgreSQL's timestamps: a commit at microsecond `c` is at or
/// before `t` exactly when it is at or before `t` truncated.
pub fn parse_time(text: &str) -> Result<Timestamp, TargetError> {
    let s = text.trim();
    let bad = |why: String| TargetError::Bad {
        value: text.to_owned(),
        why,
    };
    let t = match s.parse::<Timestamp>() {
        Ok(t) => t,
        Err(e) => {
            // A valid civil time with no offset is the common mistake; say so.
            if s.parse::<jiff::civil::DateTime>().is_ok() {
                return Err(TargetError::NoZone(text.to_owned()));
            }
            return Err(bad(e.to_string()));
        }
    };
    let micros = t.as_microsecond();
    Timestamp::from_microsecond(micros).map_err(|e| bad(e.to_string()))
}

/// A time in PostgreSQL's own spelling, UTC, microseconds:
/// `2026-11-23 03:00:00.123456+00`. PostgreSQL 15 refuses the RFC 3339 `Z`
/// form in `recovery_target_time` and will not start.
pub fn pg_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    #[test]
    fn rfc3339_and_postgres_spellings_parse_to_the_same_instant() {
        let want = ts("2026-11-23T03:00:00.123456Z");
        for s in [
            "2026-11-23T03:00:00.123456Z",
            "2026-11-23 03:00:00.123456+00",
            "2026-11-23 03:00:00.123456+00:00",
            "2026-11-23 05:00:00.123456+02",
            "2026-11-22T22:00:00.123456-05:00",
            " 2026-11-23T03:00:00.123456Z ",
        ] {
            assert_eq!(parse_time(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn a_time_without_a_zone_is_refused_not_guessed() {
        for s in ["2026-11-23 03:00:00", "2026-11-23T03:00:00.5"] {
            match parse_time(s) {
                Err(TargetError::NoZone(v)) => assert_eq!(v, s),
                other => panic!("{s}: {other:?}"),
            }
        }
        let msg = parse_time("2026-11-23 03:00:00").unwrap_err().to_string();
        assert!(msg.contains("no time zone") && msg.contains("+00"), "{msg}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        for s in ["yesterday", "", "2026-13-01T00:00:00Z", "now"] {
            let e = parse_time(s).unwrap_err();
            assert!(matches!(e, TargetError::Bad { .. }), "{s}: {e:?}");
            assert!(e.to_string().contains("RFC 3339"), "{e}");
        }
    }

    #[test]
    fn nanoseconds_are_truncated_to_postgres_precision() {
        let t = parse_time("2026-11-23T03:00:00.123456789Z").expect("parse");
        assert_eq!(t, ts("2026-11-23T03:00:00.123456Z"));
    }

    #[test]
    fn postgres_spelling_is_utc_with_microseconds_and_no_z() {
        assert_eq!(
            pg_time(ts("2026-11-23T05:00:00.1+02:00")),
            "2026-11-23 03:00:00.100000+00"
        );
        assert_eq!(
            pg_time(ts("2026-11-23T03:00:00Z")),
            "2026-11-23 03:00:00.000000+00"
        );
    }

    #[test]
    fn targets_from_arguments() {
        assert_eq!(Target::from_args(None, None, None), Ok(Target::Latest));
        assert_eq!(
            Target::from_args(None, Some("0/3000060"), None),
            Ok(Target::Lsn(Lsn(0x3000060)))
        );
        assert!(matches!(
            Target::from_args(None, Some("zz"), None),
            Err(TargetError::BadLsn(_))
        ));
        assert_eq!(
            Target::from_args(None, None, Some("before-migration")),
            Ok(Target::Name("before-migration".into()))
        );
        assert_eq!(
            Target::from_args(None, None, Some("")),
            Err(TargetError::EmptyName)
        );
    }
}
