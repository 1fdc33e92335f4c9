//! The forges (GitHub, Gitea, Forgejo) at the edge: webhook deliveries in, REST calls out,
//! the outbox delivered.

/// GitHub App authentication (JWT, installation tokens).
pub mod app;
/// The REST calls mergequeue makes.
pub mod client;
/// Delivering what the core decided to tell the forge.
pub mod outbox;
/// Signed deliveries in, typed events out.
pub mod webhook;
