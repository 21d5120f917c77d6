//! viewcast: the views of a streaming database as a live GraphQL API.
//!
//! See ARCHITECTURE.md for the data flow and the code map.

pub mod auth;
pub mod change;
pub mod cli;
pub mod config;
pub mod demo;
pub mod egress;
pub mod feed;
pub mod filter;
pub mod http;
pub mod hub;
pub mod introspect;
pub mod limits;
pub mod pgcluster;
pub mod pgconn;
pub mod run;
pub mod schema;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod trigger;
pub mod value;
