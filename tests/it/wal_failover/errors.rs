//! The failures that need an operator.
