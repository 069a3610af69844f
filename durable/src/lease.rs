//! Leases on a shared PostgreSQL database: which process (which gateway
//! replica) does a thing that only one may do at a time, such as delivering
//! to one city or holding the call-transfer switchboard.
//!
//! A lease is a session advisory lock, held on a connection of its own by a
//! keeper thread. PostgreSQL frees it when that session ends, so a replica
//! that dies (even by SIGKILL) loses its leases as soon as its socket
//! closes, and another replica's keeper takes them at its next round. The
//! keeper pings its session every round; if the session fails, the replica
//! counts itself as holding nothing at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::db::DbError;

/// How often the keeper tries for the leases it wants and checks its session.
pub const ROUND: Duration = Duration::from_millis(200);

/// The 64-bit advisory-lock key of lease `name` in `schema` (FNV-1a): the
/// schemas of one database do not share locks.
pub fn key(schema: &str, name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schema.bytes().chain([b'/']).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

#[derive(Default)]
struct State {
    wanted: HashSet<String>,
    held: HashSet<String>,
}

/// The leases of one process on one schema.
#[derive(Clone)]
pub struct Leases {
    state: Arc<Mutex<State>>,
}

impl Leases {
    /// Starts the keeper; it stops when the last `Leases` is dropped, and
    /// its session's locks go with it.
    pub fn start(url: &str, schema: &str) -> Result<Self, DbError> {
        let state = Arc::new(Mutex::new(State::default()));
        let weak = Arc::downgrade(&state);
        let (url, schema) = (url.to_owned(), schema.to_owned());
        std::thread::Builder::new()
            .name("db-leases".into())
            .spawn(move || keeper(&url, &schema, &weak))
            .map_err(|e| DbError::Open {
                path: "leases".into(),
                reason: format!("cannot start the lease keeper: {e}"),
            })?;
        Ok(Self { state })
    }

    /// Wants `name` from now on; says whether it is held now.
    pub fn holds(&self, name: &str) -> bool {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if s.held.contains(name) {
            return true;
        }
        if !s.wanted.contains(name) {
            s.wanted.insert(name.to_owned());
        }
        false
    }
}

fn keeper(url: &str, schema: &str, state: &Weak<Mutex<State>>) {
    let mut client: Option<postgres::Client> = None;
    loop {
        let Some(state) = state.upgrade() else {
            return;
        };
        if client.is_none() {
            match crate::db::connect_postgres(url, schema) {
                Ok(c) => client = Some(c),
                Err(e) => tracing::warn!(error = %e, "lease keeper cannot connect"),
            }
        }
        let wanted: Vec<String> = match state.lock() {
            Ok(s) => s.wanted.difference(&s.held).cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut taken = Vec::new();
        let mut lost = false;
        if let Some(c) = client.as_mut() {
            match c.simple_query("SELECT 1") {
                Ok(_) => {
                    for name in wanted {
                        match c.query_one("SELECT pg_try_advisory_lock($1)", &[&key(schema, &name)])
                        {
                            Ok(row) => {
                                if row.try_get::<_, bool>(0).unwrap_or(false) {
                                    taken.push(name);
                                }
                            }
                            Err(_) => {
                                lost = true;
                                break;
                            }
                        }
                    }
                }
                Err(_) => lost = true,
            }
        } else {
            lost = true;
        }
        if let Ok(mut s) = state.lock() {
            if lost {
                if !s.held.is_empty() {
                    tracing::warn!(leases = ?s.held, "lost the database session: leases given up");
                }
                s.held.clear();
            }
            for name in taken {
                tracing::info!(lease = %name, "lease taken");
                s.held.insert(name);
            }
        }
        if lost {
            client = None;
        }
        drop(state);
        std::thread::sleep(ROUND);
    }
}
