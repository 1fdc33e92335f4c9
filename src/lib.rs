//! mergequeue: a merge queue, builder dispatcher and channel gate for Nix package sets.
//!
//! The `core` module decides and performs no I/O; everything else is the shell that
//! runs its commands (git, nix, SQLite, HTTP) and feeds results back.

pub mod api;
pub mod bench;
pub mod builder;
pub mod change;
pub mod channel;
pub mod client;
pub mod config;
pub mod core;
pub mod demo;
pub mod driver;
pub mod evaluation;
pub mod fixture;
pub mod git;
pub mod harness;
pub mod nix;
pub mod outcome;
pub mod prereq;
pub mod serve;
pub mod sim;
pub mod status;
pub mod store;
pub mod systemd;
