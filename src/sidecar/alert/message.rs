//! What a notice says, per channel kind: Slack and Discord get one text,
//! the generic webhook a JSON object of fields, email a subject and a
//! plain-text body.

use jiff::Timestamp;
use serde::Serialize;

/// Discord refuses a message whose `content` is longer than this (in
/// characters).
pub(crate) const DISCORD_MAX_CHARS: usize = 2000;

/// Why a notice is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// The condition started failing.
    Failing,
    /// The condition cleared.
    Recovered,
    /// The condition is still failing and the channel's re-notify interval
    /// passed.
    Reminder,
}

impl Event {
    /// The value of the `event` field and of the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Failing => "failing",
            Event::Recovered => "recovered",
            Event::Reminder => "reminder",
        }
    }

    /// The word shown to people, in subjects and first lines.
    fn headline(self) -> &'static str {
        match self {
            Event::Failing => "FAILING",
            Event::Recovered => "RECOVERED",
            Event::Reminder => "STILL FAILING",
        }
    }
}

/// One notice, as decided by the tracker; rendered per channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    pub(crate) event: Event,
    pub(crate) id: String,
    pub(crate) database: Option<String>,
    pub(crate) destination: Option<String>,
    /// The condition's summary now.
    pub(crate) summary: String,
    /// For a recovery: the summary of the failure that cleared.
    pub(crate) was: Option<String>,
    /// When the failure began.
    pub(crate) since: Timestamp,
    /// When the notice was decided.
    pub(crate) time: Timestamp,
}

/// The generic webhook's JSON body.
#[derive(Serialize)]
struct WebhookBody<'a> {
    event: &'static str,
    id: &'a str,
    database: Option<&'a str>,
    destination: Option<&'a str>,
    summary: &'a str,
    /// Only on recovery: what was failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    was: Option<&'a str>,
    since: String,
    time: String,
    instance: &'a str,
}

/// RFC 3339 in UTC, whole seconds: what people and parsers both read.
fn rfc3339(t: Timestamp) -> String {
    format!("{t:.0}")
}

impl Notice {
    /// `[pitr] FAILING: <summary>`, the email subject and first line of the
    /// chat messages. Line breaks in the summary are flattened so a subject
    /// stays one header line.
    pub(crate) fn subject(&self) -> String {
        let summary: String = self
            .summary
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("[pitr] {}: {summary}", self.event.headline())
    }

    /// The fields, one per line, after the subject.
    pub(crate) fn body(&self, instance: &str) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: &str| {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push('\n');
        };
        line("event", self.event.as_str());
        line("id", &self.id);
        if let Some(d) = &self.database {
            line("database", d);
        }
        if let Some(d) = &self.destination {
            line("destination", d);
        }
        line("summary", &self.summary);
        if let Some(w) = &self.was {
            line("was", w);
        }
        let since = match self.event {
            Event::Recovered => "failing since",
            _ => "since",
        };
        line(since, &rfc3339(self.since));
        line("time", &rfc3339(self.time));
        line("instance", instance);
        s
    }

    /// The full text of a chat message: subject, then fields.
    fn text(&self, instance: &str) -> String {
        format!("{}\n{}", self.subject(), self.body(instance))
    }

    /// A Slack incoming webhook body: `{"text": ...}`. Slack reads `&`, `<`
    /// and `>` as markup, so they are escaped the way Slack documents.
    pub(crate) fn slack(&self, instance: &str) -> serde_json::Value {
        let text = self
            .text(instance)
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        serde_json::json!({ "text": text })
    }

    /// A Discord webhook body: `{"content": ...}`, cut to Discord's 2000
    /// characters, mentions disabled so a summary cannot ping `@everyone`.
    pub(crate) fn discord(&self, instance: &str) -> serde_json::Value {
        let text = self.text(instance);
        let content = if text.chars().count() > DISCORD_MAX_CHARS {
            let mut cut: String = text.chars().take(DISCORD_MAX_CHARS - 1).collect();
            cut.push('…');
            cut
        } else {
            text
        };
        serde_json::json!({ "content": content, "allowed_mentions": { "parse": [] } })
    }

    /// The generic webhook body: every field, times in RFC 3339.
    pub(crate) fn webhook(&self, instance: &str) -> serde_json::Value {
        serde_json::to_value(WebhookBody {
            event: self.event.as_str(),
            id: &self.id,
            database: self.database.as_deref(),
            destination: self.destination.as_deref(),
            summary: &self.summary,
            was: self.was.as_deref(),
            since: rfc3339(self.since),
            time: rfc3339(self.time),
            instance,
        })
        .unwrap_or_else(|_| serde_json::json!({ "event": self.event.as_str(), "id": self.id }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(event: Event, summary: &str) -> Notice {
        Notice {
            event,
            id: "postgres/main/stream".into(),
            database: Some("main".into()),
            destination: None,
            summary: summary.into(),
            was: None,
            since: "2026-11-25T06:00:00.5Z".parse().unwrap(),
            time: "2026-11-25T06:05:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn webhook_fields() {
        let v = notice(Event::Failing, "down").webhook("db1");
        assert_eq!(v["event"], "failing");
        assert_eq!(v["id"], "postgres/main/stream");
        assert_eq!(v["database"], "main");
        assert!(v["destination"].is_null());
        assert_eq!(v["since"], "2026-11-25T06:00:00Z");
        assert_eq!(v["time"], "2026-11-25T06:05:00Z");
        assert_eq!(v["instance"], "db1");
        assert!(v.get("was").is_none());
    }

    #[test]
    fn slack_escapes_markup() {
        let v = notice(Event::Recovered, "a <b> & c").slack("h");
        let t = v["text"].as_str().unwrap();
        assert!(
            t.starts_with("[pitr] RECOVERED: a &lt;b&gt; &amp; c\n"),
            "{t}"
        );
        assert!(t.contains("failing since: 2026-11-25T06:00:00Z"), "{t}");
    }

    #[test]
    fn discord_respects_its_limit() {
        let long = "é".repeat(5000);
        let v = notice(Event::Reminder, &long).discord("h");
        let c = v["content"].as_str().unwrap();
        assert_eq!(c.chars().count(), DISCORD_MAX_CHARS);
        assert!(c.starts_with("[pitr] STILL FAILING: éé"));
        assert!(c.ends_with('…'));
        let short = notice(Event::Failing, "x").discord("h");
        assert!(!short["content"].as_str().unwrap().ends_with('…'));
    }

    #[test]
    fn subject_is_one_line() {
        let s = notice(Event::Failing, "a\r\nb").subject();
        assert_eq!(s, "[pitr] FAILING: a  b");
    }
}
