//! Tools around the product: the scripted demo, benchmarks, synthetic package sets, the
//! real-world integration-test harness and prerequisite checks. They may call
//! `crate::core` and `crate::shell`.

pub mod bench;
pub mod bench_load;
pub mod demo;
pub mod demo_forge;
pub mod fakeforge;
pub mod fixture;
pub mod harness;
pub mod prereq;
