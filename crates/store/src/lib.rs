//! Store backends. SQLite is the embedded default (`atoll up`); PostgreSQL comes when
//! several heads share one store. Records are kept as JSON documents with the columns
//! that queries and uniqueness need pulled out beside them, so the same schema works
//! on both backends.

mod migrations;
mod sqlite;

pub use sqlite::SqliteStore;
