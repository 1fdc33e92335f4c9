//! Read-only connections for the HTTP layer and the evaluation cache, used off the
//! driver task: the single writer never waits while a log, a stored evaluation or an
//! aggregate over the retained rows is read (WAL lets readers and the writer run at once).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};

use super::{Store, StoreError};

/// Idle connections kept for reuse; more are opened when more readers run at once.
const IDLE: usize = 4;

/// A small pool of read-only [`Store`]s on the database file.
#[derive(Clone)]
pub struct Reader {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Store>>>,
}

impl Store {
    /// A connection that cannot write (`query_only`), for [`Reader`].
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "query_only", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Store { conn })
    }
}

impl Reader {
    /// Readers of the database at `path`, which the writer has already created and migrated.
    pub fn new(path: &Path) -> Reader {
        Reader {
            path: path.to_path_buf(),
            idle: Arc::default(),
        }
    }

    /// Runs `read` on a pooled connection in a blocking thread.
    pub async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking(read))
            .await
            .map_err(|e| StoreError::Corrupt(format!("reader thread: {e}")))?
    }

    /// [`Reader::read`] on the calling thread.
    pub fn read_blocking<T>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().expect("reader pool").pop();
        let store = match pooled {
            Some(s) => s,
            None => Store::open_read_only(&self.path)?,
        };
        let out = read(&store);
        let mut idle = self.idle.lock().expect("reader pool");
        if idle.len() < IDLE {
            idle.push(store);
        }
        out
    }
}
