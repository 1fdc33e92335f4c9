//! mergequeue: a merge queue, builder dispatcher and channel gate for Nix package sets.
//!
//! The crate is a pure decision core inside a shell of adapters. Dependencies point
//! inwards only: `core` ← `shell` ← `tools`, `sim`.

/// The pure decision core and its vocabulary (changes, evaluations, build outcomes).
/// It takes inputs with the current time and returns commands as data: no clock, no
/// files, no processes, no sockets. It may call nothing outside `core`.
pub mod core;
/// The adapters (git, nix, SQLite, HTTP, systemd, configuration) and the single-writer
/// driver loop that owns the core, performs its commands and feeds the results back.
/// It may call `core`.
pub mod shell;
/// Discrete-event simulation of the queue at scale, with baselines for comparison. It
/// may call `core` and `shell`.
pub mod sim;
/// Developer tools around the product: the demo, benchmarks, package-set fixtures, the
/// integration-test harness and prerequisite checks. They may call `core` and `shell`.
pub mod tools;
