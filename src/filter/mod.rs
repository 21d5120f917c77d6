//! Hasura-style `where` filters, compiled once per distinct filter and evaluated on typed rows.
