//! Alerts (webhooks: Slack, Discord, generic; email). Arrives with the sidecar issue.
