//! What an upstream reports and a hub applies: positions, changes, batches and feed events.
//! Below both the feeds (which produce them) and the hubs (which apply them), so neither
//! depends on the other for its vocabulary.

use crate::value::{Key, Row};

/// An upstream position: a PostgreSQL commit LSN, a Materialize `mz_timestamp`, a RisingWave
/// `rw_timestamp`. Totally ordered within one feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u64);

impl Position {
    /// As a PostgreSQL `bigint` (the bits of the `u64`; every upstream's positions fit).
    #[allow(clippy::cast_possible_wrap)]
    pub fn to_stored(self) -> i64 {
        self.0 as i64
    }

    #[allow(clippy::cast_sign_loss)]
    pub fn from_stored(stored: i64) -> Position {
        Position(stored as u64)
    }
}

/// One change to one key, as the upstream reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The key now has this row. `unchanged[i]` marks column `i` as "same as before" (PostgreSQL
    /// sends unchanged TOASTed values that way); the hub takes those from its cache.
    Upsert {
        row: Row,
        unchanged: Option<Box<[bool]>>,
    },
    /// The key no longer exists.
    Delete { key: Key },
    /// Every key is gone (PostgreSQL `TRUNCATE`).
    Truncate,
}

/// All changes of one closed upstream timestamp (one transaction), in upstream order.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub position: Position,
    pub changes: Vec<Change>,
}

/// What a feed tells its hub.
#[derive(Debug)]
pub enum FeedEvent {
    /// The complete contents of the relation as of `position`. The hub replaces its cache with
    /// it, publishing only the difference, so a re-snapshot after a reconnect is invisible to
    /// clients.
    Snapshot { position: Position, rows: Vec<Row> },
    /// Changes after the previous snapshot or batch.
    Batch(Batch),
    /// The feed is (re)connecting or has lost its connection; `reason` says why.
    Down { reason: String, permanent: bool },
}
