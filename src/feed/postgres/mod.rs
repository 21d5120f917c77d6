//! The Postgres feed: logical replication (pgoutput) of one table per source.

pub mod pgoutput;
pub mod relation;
