//! `[[destination]]`: the kinds and their keys.

use std::time::Duration;

use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawDestination, Section, Val};
use super::super::secrets;
use super::super::{DestinationConfig, DestinationKind, S3Config, StorachaConfig};
use super::values::{duration, each_entry, first_set, http_url, humantime, path};

/// `batch_interval`: `0` (every write, the default but for Storacha), or
/// at least a second and at most a day.
const BATCH_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(0)..=Duration::from_secs(86400);
/// A Storacha destination's default `batch_interval` when another
/// destination takes every write: each object costs several invocations and
/// an index there, and the gateway rate-limits reads.
const STORACHA_BATCH_INTERVAL: Duration = Duration::from_secs(300);
/// The destination kinds this build can write to.
const SUPPORTED_KINDS: &[&str] = &["fs", "s3", "storacha"];

pub(super) fn destinations(
    ctx: &Ctx<'_>,
    raw: Vec<RawDestination>,
) -> Result<Vec<DestinationConfig>, ConfigError> {
    let section = Section::Destination;
    if raw.is_empty() {
        return Err(ctx.missing(
            &KeyName::plain(section, ""),
            "no destination is configured, so backups would have nowhere to go",
            "Add one, e.g.\n[[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"/var/lib/pitr/repo\"",
        ));
    }
    // Per destination: the key's origin and whether it was given at all.
    let mut batch_given = Vec::with_capacity(raw.len());
    let mut out = each_entry(ctx, section, raw, |key, name, mut d| {
        let batch_interval = match d.batch_interval.take() {
            None => None,
            Some(v) => {
                let k = key("batch_interval");
                let every = duration(ctx, &k, &v, BATCH_INTERVALS, "5m")?;
                if every > Duration::ZERO && every < Duration::from_secs(1) {
                    return Err(ctx.invalid(
                        &k,
                        &v.origin,
                        &format!("{} is less than a second", humantime(every)),
                        "Give 0 (every write, as it happens) or an interval of at least a second, e.g. \"5m\"",
                    ));
                }
                Some((every, v.origin, k))
            }
        };
        let supported = SUPPORTED_KINDS.join(", ");
        let Some(kind) = d.kind.take() else {
            return Err(ctx.missing(
                &key("kind"),
                "the destination has no kind",
                &format!("Add kind = \"fs\" (supported kinds: {supported})"),
            ));
        };
        let kind = match kind.value.as_str() {
            "fs" => {
                let Some(p) = d.path.take() else {
                    return Err(ctx.missing(
                        &key("path"),
                        "a destination of kind \"fs\" needs a path",
                        "Add path = \"/var/lib/pitr/repo\" (the directory backups are written to)",
                    ));
                };
                let s3_key = s3_key_set(&d)
                    .or_else(|| first_set([("request_timeout", d.request_timeout.is_some())]));
                if let Some(k) = s3_key {
                    return Err(other_kinds_key(ctx, &key(k), "s3", "fs"));
                }
                if let Some(k) = storacha_key_set(&d) {
                    return Err(other_kinds_key(ctx, &key(k), "storacha", "fs"));
                }
                DestinationKind::Fs {
                    path: path(ctx, &key("path"), &p)?,
                }
            }
            "s3" => s3(ctx, key, d)?,
            "storacha" => storacha(ctx, key, d)?,
            other => {
                return Err(ctx.invalid(
                    &key("kind"),
                    &kind.origin,
                    &format!("unknown kind {other:?}"),
                    &format!("Use one of the supported kinds: {supported}"),
                ));
            }
        };
        let storacha = matches!(kind, DestinationKind::Storacha(_));
        batch_given.push((batch_interval.clone(), storacha));
        Ok(DestinationConfig {
            name,
            kind,
            batch_interval: batch_interval
                .map(|(every, _, _)| every)
                .filter(|e| !e.is_zero()),
        })
    })?;
    // Storacha is batched unless told otherwise, when some other destination
    // takes every write (a lone Storacha destination takes them itself).
    // Those that take every write by choice or by kind (not Storacha left
    // at its default).
    let unbatched: Vec<bool> = out
        .iter()
        .zip(&batch_given)
        .map(|(d, (given, storacha))| !d.is_batched() && (given.is_some() || !storacha))
        .collect();
    for (i, d) in out.iter_mut().enumerate() {
        let elsewhere = unbatched.iter().enumerate().any(|(j, u)| j != i && *u);
        if batch_given[i].0.is_none() && batch_given[i].1 && elsewhere {
            d.batch_interval = Some(STORACHA_BATCH_INTERVAL);
        }
    }
    if out.iter().all(DestinationConfig::is_batched) {
        let (_, origin, k) = batch_given
            .iter()
            .rev()
            .find_map(|(b, _)| b.clone())
            .expect("every destination is batched, so one has the key");
        return Err(ctx.invalid(
            &k,
            &origin,
            "every destination is batched, so none takes each write as it happens: nothing \
             could acknowledge WAL, and the last minutes of every database would be at risk",
            "Leave at least one destination without batch_interval (or with batch_interval = 0); \
             to restore from a batched destination alone, write a config that names only it, without batch_interval",
        ));
    }
    Ok(out)
}

/// A `kind = "s3"` destination's keys.
fn s3(
    ctx: &Ctx<'_>,
    key: &dyn Fn(&str) -> KeyName,
    d: RawDestination,
) -> Result<DestinationKind, ConfigError> {
    if let Some(k) = storacha_key_set(&d) {
        return Err(other_kinds_key(ctx, &key(k), "storacha", "s3"));
    }
    let Some(bucket) = d.bucket else {
        return Err(ctx.missing(
            &key("bucket"),
            "a destination of kind \"s3\" needs a bucket",
            "Add bucket = \"backups\" (the bucket must exist)",
        ));
    };
    if bucket.value.trim().is_empty() {
        return Err(ctx.invalid(
            &key("bucket"),
            &bucket.origin,
            "is empty",
            "Give the bucket's name, e.g. bucket = \"backups\"",
        ));
    }
    let endpoint = match d.endpoint {
        None => None,
        Some(e) => {
            let ok = (e.value.starts_with("http://") || e.value.starts_with("https://"))
                && e.value.len() > "https://".len();
            if !ok {
                return Err(ctx.invalid(
                    &key("endpoint"),
                    &e.origin,
                    &format!("{:?} is not an http(s) URL", e.value),
                    "Give the store's URL, e.g. endpoint = \"https://s3.eu-central-1.amazonaws.com\" or \"http://127.0.0.1:9000\"",
                ));
            }
            Some(e.value)
        }
    };
    let secret = secrets::text(
        ctx,
        &key("secret_access_key"),
        d.secret_access_key,
        d.secret_access_key_file,
    )?;
    let request_timeout = request_timeout(ctx, &key("request_timeout"), d.request_timeout)?;
    let unused = [("path", d.path.is_some())];
    for (k, set) in unused {
        if set {
            return Err(ctx.missing(
                &key(k),
                &format!("{k} is not a key of a destination of kind \"s3\""),
                "Remove it; an s3 destination is bucket, prefix, region, endpoint, access_key_id and secret_access_key(_file)",
            ));
        }
    }
    Ok(DestinationKind::S3(S3Config {
        bucket: bucket.value,
        prefix: d.prefix.map(|p| p.value).unwrap_or_default(),
        region: d
            .region
            .map(|r| r.value)
            .unwrap_or_else(|| "us-east-1".to_owned()),
        endpoint,
        access_key_id: d.access_key_id.map(|a| a.value),
        secret_access_key: secret.map(|s| s.value),
        request_timeout,
    }))
}

/// Key `key` of kind `owner` set on a destination of kind `kind`.
fn other_kinds_key(ctx: &Ctx<'_>, key: &KeyName, owner: &str, kind: &str) -> ConfigError {
    ctx.missing(
        key,
        &format!(
            "{} is a key of kind {owner:?}, not of kind {kind:?}",
            key.key
        ),
        &format!("Remove it, or set kind = {owner:?}"),
    )
}

/// The first key of kind "s3" alone set in `d`, if any.
fn s3_key_set(d: &RawDestination) -> Option<&'static str> {
    first_set([
        ("bucket", d.bucket.is_some()),
        ("prefix", d.prefix.is_some()),
        ("region", d.region.is_some()),
        ("endpoint", d.endpoint.is_some()),
        ("access_key_id", d.access_key_id.is_some()),
        ("secret_access_key", d.secret_access_key.is_some()),
        ("secret_access_key_file", d.secret_access_key_file.is_some()),
    ])
}

/// The first key of kind "storacha" set in `d`, if any.
fn storacha_key_set(d: &RawDestination) -> Option<&'static str> {
    first_set([
        ("space", d.space.is_some()),
        ("principal", d.principal.is_some()),
        ("principal_file", d.principal_file.is_some()),
        ("proof", d.proof.is_some()),
        ("proof_file", d.proof_file.is_some()),
        ("service", d.service.is_some()),
        ("service_did", d.service_did.is_some()),
        ("gateway", d.gateway.is_some()),
    ])
}

/// `request_timeout` of an s3 or storacha destination: whole seconds from 1
/// to 3600, 60 when not given.
fn request_timeout(
    ctx: &Ctx<'_>,
    key: &KeyName,
    v: Option<Val<i64>>,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(Duration::from_secs(60)),
        Some(t) if (1..=3600).contains(&t.value) => Ok(Duration::from_secs(t.value as u64)),
        Some(t) => Err(ctx.invalid(
            key,
            &t.origin,
            &format!("{} is not between 1 and 3600 seconds", t.value),
            "request_timeout = 60",
        )),
    }
}

/// A `kind = "storacha"` destination's keys.
fn storacha(
    ctx: &Ctx<'_>,
    key: &dyn Fn(&str) -> KeyName,
    d: RawDestination,
) -> Result<DestinationKind, ConfigError> {
    let other = first_set([("path", d.path.is_some())]).or_else(|| s3_key_set(&d));
    if let Some(k) = other {
        return Err(ctx.missing(
            &key(k),
            &format!("{k} is not a key of a destination of kind \"storacha\""),
            "Remove it; a storacha destination is space, principal(_file), proof(_file), service, service_did, gateway and request_timeout",
        ));
    }
    let Some(space) = d.space else {
        return Err(ctx.missing(
            &key("space"),
            "a destination of kind \"storacha\" needs the space's DID",
            "Add space = \"did:key:z6Mk…\" (`storacha space ls` lists them)",
        ));
    };
    if !space.value.starts_with("did:") || space.value.contains(char::is_whitespace) {
        return Err(ctx.invalid(
            &key("space"),
            &space.origin,
            &format!("{:?} is not a DID", space.value),
            "Give the space's DID, e.g. space = \"did:key:z6Mk…\" (`storacha space ls` lists them)",
        ));
    }
    let mut creds = Vec::new();
    for (name, inline, file, what, how) in [
        (
            "principal",
            d.principal,
            d.principal_file,
            "the agent's private key (W3_PRINCIPAL)",
            "Run `storacha key create`, keep the private key it prints (M…) in a file and give principal_file = \"/run/secrets/w3-principal\"",
        ),
        (
            "proof",
            d.proof,
            d.proof_file,
            "the delegation from the space to the agent (W3_PROOF)",
            "Run `storacha delegation create <the agent's DID> --base64 …` (docs/DESTINATIONS.md lists the --can flags pitr needs) and give proof_file = \"/run/secrets/w3-proof\"",
        ),
    ] {
        match secrets::text(ctx, &key(name), inline, file)? {
            None => {
                return Err(ctx.missing(
                    &key(name),
                    &format!("a destination of kind \"storacha\" needs {name}: {what}"),
                    how,
                ));
            }
            Some(s)
                if s.value.trim().is_empty()
                    || s.value.trim().contains(char::is_whitespace)
                    // The shipped templates' `<PITR_...>` placeholders.
                    || (s.value.starts_with('<') && s.value.ends_with('>')) =>
            {
                return Err(ctx.invalid(
                    &s.key,
                    &s.origin,
                    "is empty, contains spaces or is a <PLACEHOLDER> left unfilled",
                    how,
                ));
            }
            Some(s) => creds.push(s.value.trim().to_owned()),
        }
    }
    let proof = creds.pop().unwrap_or_default();
    let principal = creds.pop().unwrap_or_default();
    let service = http_url(
        ctx,
        &key("service"),
        d.service,
        "https://up.storacha.network",
        "service = \"https://up.storacha.network\"",
    )?;
    let service_did = match d.service_did {
        None => "did:web:up.storacha.network".to_owned(),
        Some(v) if v.value.starts_with("did:") && !v.value.contains(char::is_whitespace) => v.value,
        Some(v) => {
            return Err(ctx.invalid(
                &key("service_did"),
                &v.origin,
                &format!("{:?} is not a DID", v.value),
                "service_did = \"did:web:up.storacha.network\"",
            ));
        }
    };
    let gateway = http_url(
        ctx,
        &key("gateway"),
        d.gateway,
        "https://storacha.link",
        "gateway = \"https://storacha.link\"",
    )?;
    let request_timeout = request_timeout(ctx, &key("request_timeout"), d.request_timeout)?;
    Ok(DestinationKind::Storacha(StorachaConfig {
        space: space.value,
        principal,
        proof,
        service,
        service_did,
        gateway,
        request_timeout,
    }))
}
