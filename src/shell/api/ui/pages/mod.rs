//! The pages, each a pure function from the JSON its API twin returns (and the current
//! time) to HTML, so a page can be rendered and measured without a server.

pub mod change;
pub mod compare;
pub mod ops;
pub mod queue;
