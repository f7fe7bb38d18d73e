//! `[[alert]]`: the channels and their keys.

use std::time::Duration;

use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawAlert, Section, Val};
use super::super::secrets;
use super::super::{AlertConfig, AlertKind};
use super::values::{duration, each_entry, first_set};

const ALERT_KINDS: &str = "slack, discord, webhook, email";

pub(super) fn alerts(ctx: &Ctx<'_>, raw: Vec<RawAlert>) -> Result<Vec<AlertConfig>, ConfigError> {
    each_entry(ctx, Section::Alert, raw, |key, name, mut a| {
        let Some(kind) = a.kind.take() else {
            return Err(ctx.missing(
                &key("kind"),
                "the alert channel has no kind",
                &format!("Add kind = \"slack\" (kinds: {ALERT_KINDS})"),
            ));
        };
        let renotify = a.renotify.take();
        let is_email = kind.value == "email";
        // Keys of the other family are refused, not ignored: a channel
        // that silently drops its `to` would never page anyone.
        let wrong = if is_email {
            first_set([("url", a.url.is_some()), ("url_file", a.url_file.is_some())])
        } else {
            first_set([
                ("smtp_url", a.smtp_url.is_some()),
                ("smtp_url_file", a.smtp_url_file.is_some()),
                ("from", a.from.is_some()),
                ("to", a.to.is_some()),
            ])
        };
        if let Some(k) = wrong {
            return Err(ctx.missing(
                &key(k),
                &format!("{k} is not a key of kind {:?}", kind.value),
                "Remove it, or change kind (email takes smtp_url, from, to; the others take url)",
            ));
        }
        let kind = match kind.value.as_str() {
            "slack" | "discord" | "webhook" => {
                let Some((value, _, _)) = secret_url(
                    ctx,
                    &key("url"),
                    a.url.take(),
                    a.url_file.take(),
                    &["http", "https"],
                    "is not an http(s) URL",
                    "Give the webhook's full URL, e.g. https://hooks.slack.com/services/…",
                )?
                else {
                    return Err(ctx.missing(
                        &key("url"),
                        &format!("a {:?} alert channel needs a url", kind.value),
                        "Add url = \"https://…\" (the webhook URL), or url_file = \"/run/secrets/…\" naming a file that holds it",
                    ));
                };
                match kind.value.as_str() {
                    "slack" => AlertKind::Slack { url: value },
                    "discord" => AlertKind::Discord { url: value },
                    _ => AlertKind::Webhook { url: value },
                }
            }
            "email" => email(ctx, key, a)?,
            other => {
                return Err(ctx.invalid(
                    &key("kind"),
                    &kind.origin,
                    &format!("unknown kind {other:?}"),
                    &format!("Use one of: {ALERT_KINDS}"),
                ));
            }
        };
        let renotify = match renotify {
            None => None,
            Some(v) if matches!(&v.value, toml::Value::String(s) if s.trim() == "off") => None,
            Some(v) => Some(duration(
                ctx,
                &key("renotify"),
                &v,
                Duration::from_secs(60)..=Duration::from_secs(30 * 86400),
                "24h",
            )?),
        };
        Ok(AlertConfig {
            name,
            kind,
            renotify,
        })
    })
}

/// A `kind = "email"` channel's keys.
fn email(
    ctx: &Ctx<'_>,
    key: &dyn Fn(&str) -> KeyName,
    mut a: RawAlert,
) -> Result<AlertKind, ConfigError> {
    let Some((smtp_url, u, smtp)) = secret_url(
        ctx,
        &key("smtp_url"),
        a.smtp_url.take(),
        a.smtp_url_file.take(),
        &["smtp", "smtps"],
        "is not an smtp:// or smtps:// URL",
        "Write it as smtp://user:password@host:587 (STARTTLS required), smtps://user:password@host:465 (TLS), or smtp://host:25?tls=none for a relay on loopback",
    )?
    else {
        return Err(ctx.missing(
            &key("smtp_url"),
            "an email alert channel needs an SMTP server",
            "Add smtp_url = \"smtp://user:password@mail.example.com:587\" (STARTTLS) or \"smtps://…:465\", or smtp_url_file naming a file that holds it",
        ));
    };
    // The TLS mode is the only parameter; a misspelt one must not quietly
    // leave STARTTLS required (or worse, be read as off).
    let implicit = u.scheme() == "smtps";
    for (k, v) in u.query_pairs() {
        let known =
            k == "tls" && !implicit && matches!(v.as_ref(), "required" | "opportunistic" | "none");
        if !known {
            return Err(ctx.invalid(
                &smtp.key,
                &smtp.origin,
                &format!("has the parameter {k}={v:?}, which pitr does not know"),
                "The only parameter is tls: smtp://… requires STARTTLS, smtp://…?tls=opportunistic uses it when offered, smtp://…?tls=none is plain text (a relay on loopback); smtps:// is always TLS and takes none",
            ));
        }
    }
    let mailbox = |k: &str, v: &Val<String>| -> Result<String, ConfigError> {
        match v.value.trim().parse::<lettre::message::Mailbox>() {
            Ok(_) => Ok(v.value.trim().to_owned()),
            Err(e) => Err(ctx.invalid(
                &key(k),
                &v.origin,
                &format!("{:?} is not an email address ({e})", v.value),
                "Give an address like pitr@example.com or \"pitr <pitr@example.com>\"",
            )),
        }
    };
    let Some(from) = a.from.take() else {
        return Err(ctx.missing(
            &key("from"),
            "an email alert channel needs a sender",
            "Add from = \"pitr@example.com\"",
        ));
    };
    let from = mailbox("from", &from)?;
    let to = match a.to.take() {
        Some(list) if !list.value.is_empty() => list
            .value
            .iter()
            .map(|v| mailbox("to", v))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(ctx.missing(
                &key("to"),
                "an email alert channel needs at least one recipient",
                "Add to = [\"oncall@example.com\"]",
            ));
        }
    };
    Ok(AlertKind::Email { smtp_url, from, to })
}

/// A URL given inline or through its `_file` key (`None` when neither is
/// set): trimmed, of one of `schemes` and with a host, or an error saying
/// `not_url` with `fix`. The URL is never echoed: it may hold a credential.
/// Returns the URL, its parse, and the secret that gave it (whose key and
/// origin later messages point at).
fn secret_url(
    ctx: &Ctx<'_>,
    key: &KeyName,
    inline: Option<Val<String>>,
    file: Option<Val<String>>,
    schemes: &[&str],
    not_url: &str,
    fix: &str,
) -> Result<Option<(String, reqwest::Url, secrets::Secret)>, ConfigError> {
    let Some(secret) = secrets::text(ctx, key, inline, file)? else {
        return Ok(None);
    };
    let value = secret.value.trim().to_owned();
    let parsed = reqwest::Url::parse(&value)
        .ok()
        .filter(|u| schemes.contains(&u.scheme()) && u.host().is_some());
    match parsed {
        Some(u) => Ok(Some((value, u, secret))),
        None => Err(ctx.invalid(&secret.key, &secret.origin, not_url, fix)),
    }
}
