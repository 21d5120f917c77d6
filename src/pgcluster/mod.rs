//! A private PostgreSQL cluster started from the machine's PostgreSQL binaries.
