//! The shell around the pure core: adapters that perform the core's commands (git, nix,
//! SQLite, HTTP, systemd) and the driver, the single writer that owns the `Core` and the
//! `Store` and feeds every result back as an input. The shell may call `crate::core`.

pub mod api;
pub mod artifacts;
pub mod builder;
pub mod cache;
pub mod channel;
pub mod client;
pub mod config;
pub mod driver;
pub mod forge;
pub mod git;
pub mod nix;
pub mod notifier;
pub mod refname;
pub mod serve;
pub mod status;
pub mod store;
pub mod systemd;
