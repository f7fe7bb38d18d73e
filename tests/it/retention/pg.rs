//! Retention against real clusters (see the parent module).
