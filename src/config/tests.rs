//! Unit tests of config loading; each asserts on the message an operator sees.
