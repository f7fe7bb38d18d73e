//! The health endpoint and Prometheus metrics. Arrives with the sidecar issue.
