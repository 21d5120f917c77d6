//! viewcast: the views of a streaming database as a live GraphQL API.
//!
//! See ARCHITECTURE.md for the data flow and the code map.

pub mod config;
pub mod feed;
pub mod filter;
pub mod pgcluster;
pub mod value;
