//! Adapters that run the Nix CLI: evaluation of jobsets and realisation of derivations.

pub mod build;
pub mod eval;
