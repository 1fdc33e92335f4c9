//! The forges (GitHub, Gitea, Forgejo) at the edge: webhook deliveries in.

/// Signed deliveries in, typed events out.
pub mod webhook;
