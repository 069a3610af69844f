//! Records every transfer's moves in the ledger, and the transfer
//! statistics with them, off the signalling path: the switchboard relays a
//! move at once and hands it here; one task writes what has gathered in one
//! transaction, in the order the switchboard made the moves.
//!
//! Signalling is live state: what a crash loses of the last moves does not
//! matter, because a restarted gateway fails every transfer its ledger
//! still shows live ([`fail_unfinished`]), and the nodes fail theirs when
//! the stream drops.

use hotline_durable::Db;
use hotline_durable::sql::{Connection, params};
use hotline_proto::pb::{Transfer, TransferState};
use hotline_proto::time;
use hotline_proto::transfer::{is_terminal, state_key};
use prost::Message;
use tokio::sync::mpsc;

use crate::error::GatewayError;
use crate::flow::{self, Bell};
use crate::windows::{self, Metric};

pub const SCHEMA: &str = "
CREATE TABLE transfers (
    id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    target TEXT NOT NULL,
    category TEXT NOT NULL,
    state INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    answered_ms INTEGER,
    ended_ms INTEGER,
    body BLOB NOT NULL
);
CREATE INDEX transfers_live ON transfers (state) WHERE ended_ms IS NULL;
-- The cumulative tables below were replaced by the windows (windows.rs)
-- and are dropped by a later migration.
-- direction: 'out' (started here), 'in' (offered here), 'answered' (here)
CREATE TABLE transfer_totals (
    city TEXT NOT NULL,
    direction TEXT NOT NULL,
    category TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (city, direction, category)
) WITHOUT ROWID;
CREATE TABLE transfer_outcomes (
    city TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (city, state)
) WITHOUT ROWID;
CREATE TABLE transfer_answers (
    city TEXT PRIMARY KEY,
    n INTEGER NOT NULL,
    answer_ms_sum INTEGER NOT NULL
) WITHOUT ROWID;
";

type Move = (TransferState, Transfer);

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Move>,
}

impl Recorder {
    /// Starts the writing task.
    pub fn start(db: Db, bell: Bell) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(run(db, rx, bell)))
    }

    /// Records that `t` moved from `from` to its state now.
    pub fn record(&self, from: TransferState, t: Transfer) {
        let _ = self.tx.send((from, t));
    }
}

async fn run(db: Db, mut rx: mpsc::UnboundedReceiver<Move>, bell: Bell) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let moves = std::mem::take(&mut batch);
        let result = db
            .write(move |c| {
                for (from, t) in &moves {
                    write(c, *from, t)?;
                }
                Ok::<_, GatewayError>(())
            })
            .await;
        match result {
            Ok(()) => bell.ring(),
            Err(e) => tracing::error!(error = %e, "cannot record transfer moves"),
        }
    }
}

fn ms(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(time::to_unix_ms)
}

fn write(c: &Connection, from: TransferState, t: &Transfer) -> Result<(), GatewayError> {
    let to = TransferState::try_from(t.state).unwrap_or(TransferState::Unspecified);
    let now = time::now_ms();
    let ended = is_terminal(to).then(|| ms(&t.end_time).unwrap_or(now));
    c.prepare_cached(
        "INSERT INTO transfers (id, origin, target, category, state, reason, created_ms, answered_ms, ended_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, reason = excluded.reason,
           answered_ms = excluded.answered_ms, ended_ms = excluded.ended_ms, body = excluded.body",
    )?
    .execute(params![
        t.id,
        t.origin_city,
        t.target_city,
        t.category,
        t.state,
        t.reason,
        ms(&t.create_time).unwrap_or(now),
        ms(&t.answer_time),
        ended,
        t.encode_to_vec()
    ])?;
    let count = |city: &str, m: Metric, detail: &str, n: i64| {
        windows::count(c, now, city, &t.category, m, detail, n)
    };
    if from == TransferState::Initiated {
        count(&t.origin_city, Metric::TransfersOut, &t.target_city, 1)?;
        count(&t.target_city, Metric::TransfersIn, &t.origin_city, 1)?;
    }
    if to == TransferState::Answered {
        let waited = ms(&t.answer_time)
            .unwrap_or(now)
            .saturating_sub(ms(&t.create_time).unwrap_or(now))
            .max(0);
        count(&t.target_city, Metric::TransfersAnswered, "", 1)?;
        count(&t.target_city, Metric::AnswerMsSum, "", waited)?;
    }
    if is_terminal(to) {
        count(&t.target_city, Metric::TransferOutcome, state_key(to), 1)?;
    }
    flow::transfer(c, now, t)?;
    Ok(())
}

/// At start: every transfer the ledger still shows live ended with the
/// gateway that held it.
pub fn fail_unfinished(c: &Connection) -> Result<usize, GatewayError> {
    let mut stmt = c.prepare("SELECT body FROM transfers WHERE ended_ms IS NULL")?;
    let bodies: Vec<Vec<u8>> = stmt
        .query_map((), |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut n = 0;
    for body in bodies {
        let Ok(mut t) = Transfer::decode(body.as_slice()) else {
            continue;
        };
        let from = TransferState::try_from(t.state).unwrap_or(TransferState::Unspecified);
        if is_terminal(from) {
            continue;
        }
        t.state = TransferState::Failed as i32;
        t.reason = "gateway-restart".into();
        t.end_time = Some(time::now());
        write(c, from, &t)?;
        n += 1;
    }
    Ok(n)
}
