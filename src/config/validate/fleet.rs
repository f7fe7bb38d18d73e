//! `[fleet]`: where this sidecar publishes its catalog for the fleet.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::Val;
use super::super::raw::{RawFleet, Section};
use super::super::secrets;
use super::super::{FleetConfig, FleetKind, ReceiveConfig};
use super::postgres::INSECURE_PASSWORD_FIX;
use super::values::{boolean, duration, path, tls_files};

/// Shorter would hammer the fleet database; longer would not say the
/// instance is alive.
const INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Labels per instance: bounds that keep every row a sidecar writes small
/// (the receiver checks the same).
pub const MAX_LABELS: usize = 32;
/// The longest label key.
pub const MAX_LABEL_KEY: usize = 63;
/// The longest label value.
pub const MAX_LABEL_VALUE: usize = 255;
/// Where `pitr fleet receive` listens without `receive_listen`.
const DEFAULT_RECEIVE_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 9188);

pub(super) fn fleet(ctx: &Ctx<'_>, mut f: RawFleet) -> Result<FleetConfig, ConfigError> {
    let key = |k: &str| KeyName::plain(Section::Fleet, k);
    let kind = match f.kind.take() {
        None => FleetKind::Postgres,
        Some(v) => match v.value.trim() {
            "postgres" => FleetKind::Postgres,
            "http" => FleetKind::Http,
            other => {
                return Err(ctx.invalid(
                    &key("kind"),
                    &v.origin,
                    &format!("{other:?} is not a fleet transport pitr has"),
                    "Write kind = \"postgres\" (the default: the sidecar connects to the fleet database itself) or kind = \"http\" (it POSTs to a receiver, docs/FLEET.md)",
                ));
            }
        },
    };
    let allow_insecure_http = boolean(
        ctx,
        &key("allow_insecure_http"),
        f.allow_insecure_http.clone(),
        INSECURE_HTTP_FIX,
    )?;
    let url = match f.url.take() {
        None => {
            return Err(ctx.missing(
                &key("url"),
                "[fleet] has no url: the sidecar cannot know where the fleet catalog is",
                "Add url = \"postgres://pitr_INSTANCE@catalog.internal/fleet\" (or a conninfo string), or set PITR_FLEET_URL; remove [fleet] to publish nothing",
            ));
        }
        Some(v) if v.value.trim().is_empty() => {
            return Err(ctx.invalid(
                &key("url"),
                &v.origin,
                "is empty",
                "Give a PostgreSQL URL or conninfo string of the fleet database, e.g. \"host=catalog.internal user=pitr_api dbname=fleet sslmode=verify-full\"",
            ));
        }
        Some(v) if kind == FleetKind::Http => receiver_url(ctx, v, allow_insecure_http)?,
        Some(v) => v.value,
    };
    transport_keys(ctx, kind, &f)?;
    let password =
        secrets::text(ctx, &key("password"), f.password, f.password_file)?.map(|s| s.value);
    let token = match kind {
        FleetKind::Postgres => None,
        FleetKind::Http => Some(secrets::required_text(
            ctx,
            &key("token"),
            f.token,
            f.token_file,
            (
                "kind = \"http\" sends a bearer token and none is set",
                "Add token_file = \"/run/secrets/fleet-token\" (the token the receiver's DBA issued for this instance's role), or set PITR_FLEET_TOKEN",
            ),
            "Put the receiver's token for this instance in it",
        )?),
    };
    let receive = ReceiveConfig {
        listen: match f.receive_listen {
            None => DEFAULT_RECEIVE_LISTEN.into(),
            Some(v) => v.value.trim().parse().map_err(|e| {
                ctx.invalid(
                    &key("receive_listen"),
                    &v.origin,
                    &format!("{:?} is not an IP address and port ({e})", v.value),
                    "Give an IP and port, e.g. receive_listen = \"0.0.0.0:9188\" (host names are not accepted)",
                )
            })?,
        },
        tokens_file: f
            .receive_tokens_file
            .map(|v| path(ctx, &key("receive_tokens_file"), &v))
            .transpose()?,
        tls: tls_files(
            ctx,
            Section::Fleet,
            "receive_",
            f.receive_tls_cert_file,
            f.receive_tls_key_file,
        )?,
    };
    let ca_file = f
        .ca_file
        .map(|v| path(ctx, &key("ca_file"), &v))
        .transpose()?;
    let allow_insecure_password = boolean(
        ctx,
        &key("allow_insecure_password"),
        f.allow_insecure_password,
        INSECURE_PASSWORD_FIX,
    )?;
    let instance = match f.instance {
        None => {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default();
            if !valid_instance(&host) {
                return Err(ctx.missing(
                    &key("instance"),
                    &format!("the host name {host:?} cannot serve as the fleet instance name"),
                    "Set instance = \"NAME\" (letters, digits, `_`, `-`, `.`, at most 63) in [fleet]",
                ));
            }
            host
        }
        Some(v) if !valid_instance(v.value.trim()) => {
            return Err(ctx.invalid(
                &key("instance"),
                &v.origin,
                &format!("{:?} is not a valid instance name", v.value),
                "Use 1 to 63 letters, digits, `_`, `-` or `.`, unique in the fleet (e.g. the deployment's name)",
            ));
        }
        Some(v) => v.value.trim().to_owned(),
    };
    let mut labels = BTreeMap::new();
    if let Some(v) = f.labels {
        let fix = format!(
            "Write labels as a table of short strings, e.g. labels = {{ service = \"api\", region = \"eu\" }} (or PITR_FLEET_LABELS=\"service=api,region=eu\"): at most {MAX_LABELS} labels, keys of at most {MAX_LABEL_KEY} characters, values of at most {MAX_LABEL_VALUE}"
        );
        let table = &v.value;
        if table.len() > MAX_LABELS {
            return Err(ctx.invalid(
                &key("labels"),
                &v.origin,
                &format!("has {} labels", table.len()),
                &fix,
            ));
        }
        for (k, value) in table {
            let text = value.as_str().filter(|s| s.len() <= MAX_LABEL_VALUE);
            match text {
                Some(text) if !k.is_empty() && k.len() <= MAX_LABEL_KEY => {
                    labels.insert(k.clone(), text.to_owned());
                }
                _ => {
                    return Err(ctx.invalid(
                        &key("labels"),
                        &v.origin,
                        &format!("label {k:?} = {value} is not a short string"),
                        &fix,
                    ));
                }
            }
        }
    }
    let publish_interval = match f.publish_interval {
        None => DEFAULT_INTERVAL,
        Some(v) => duration(ctx, &key("publish_interval"), &v, INTERVALS, "30s")?,
    };
    Ok(FleetConfig {
        kind,
        url,
        password,
        allow_insecure_password,
        instance,
        labels,
        publish_interval,
        token,
        allow_insecure_http,
        ca_file,
        receive,
    })
}

/// What to do about an `allow_insecure_http` that is not a boolean.
const INSECURE_HTTP_FIX: &str = "Leave it out (false): pitr then sends the token only over https, or plain http to a loopback address. Set allow_insecure_http = true only where the network path is trusted";

/// Refuses the keys of the other transport: a token set for a PostgreSQL
/// connection (or a password for the receiver) would silently do nothing.
fn transport_keys(ctx: &Ctx<'_>, kind: FleetKind, f: &RawFleet) -> Result<(), ConfigError> {
    let given = |v: &Option<Val<String>>| v.as_ref().map(|v| v.origin.clone());
    let (wrong, fix) = match kind {
        FleetKind::Postgres => (
            vec![
                ("token", given(&f.token)),
                ("token_file", given(&f.token_file)),
                (
                    "allow_insecure_http",
                    f.allow_insecure_http.as_ref().map(|v| v.origin.clone()),
                ),
                ("ca_file", given(&f.ca_file)),
            ],
            "These belong to kind = \"http\": remove them, or set kind = \"http\" with url = \"https://receiver…\" (a PostgreSQL connection takes its CA from sslrootcert in url)",
        ),
        FleetKind::Http => (
            vec![
                ("password", given(&f.password)),
                ("password_file", given(&f.password_file)),
                (
                    "allow_insecure_password",
                    f.allow_insecure_password.as_ref().map(|v| v.origin.clone()),
                ),
            ],
            "The receiver holds the database password; the sidecar sends a bearer token: use token_file, or kind = \"postgres\" to connect itself",
        ),
    };
    match wrong.into_iter().find_map(|(k, o)| o.map(|o| (k, o))) {
        None => Ok(()),
        Some((k, origin)) => Err(ctx.invalid(
            &KeyName::plain(Section::Fleet, k),
            &origin,
            &format!("does not apply to kind = \"{}\"", kind_name(kind)),
            fix,
        )),
    }
}

fn kind_name(kind: FleetKind) -> &'static str {
    match kind {
        FleetKind::Postgres => "postgres",
        FleetKind::Http => "http",
    }
}

/// The receiver's base URL: https, or plain http to a loopback address
/// (or anywhere with `allow_insecure_http`), since the bearer token
/// travels in every request.
fn receiver_url(ctx: &Ctx<'_>, v: Val<String>, insecure: bool) -> Result<String, ConfigError> {
    let key = KeyName::plain(Section::Fleet, "url");
    let text = v.value.trim().trim_end_matches('/').to_owned();
    let url = reqwest::Url::parse(&text).ok().filter(|u| {
        u.host().is_some()
            && matches!(u.scheme(), "http" | "https")
            && u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.fragment().is_none()
    });
    let Some(url) = url else {
        return Err(ctx.invalid(
            &key,
            &v.origin,
            &format!("{:?} is not an http(s) URL of a receiver", v.value),
            "Give the receiver's base URL without credentials or query, e.g. url = \"https://fleet-receiver.internal\" (the token goes in token_file)",
        ));
    };
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() == "http" && !loopback && !insecure {
        return Err(ctx.invalid(
            &key,
            &v.origin,
            "sends the bearer token over plain http to a host that is not loopback",
            "Use https://, or set allow_insecure_http = true in [fleet] where the network path is trusted",
        ));
    }
    Ok(text)
}

/// What an instance may be called: it keys rows and roles map to it.
pub fn valid_instance(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
