//! Records every transfer's moves in the ledger, and the transfer
//! statistics with them, on the signalling path: the switchboard decides a
//! move under its lock and hands it here with the messages that relay it;
//! one task writes what has gathered in one transaction, in the order the
//! switchboard made the moves, and sends the messages only once that
//! transaction is committed. A move a city hears of is in the ledger, so a
//! SIGKILL of the gateway loses no move and no count; the price is one
//! group commit on each hop of the signalling (docs/benchmarks.md).
//!
//! A restarted gateway fails every transfer its ledger still shows live
//! ([`fail_unfinished`]), and the nodes fail theirs when the stream drops.

use hotline_durable::sql::params;
use hotline_proto::pb::{Transfer, TransferSignalsResponse, TransferState};
use hotline_proto::time;
use hotline_proto::transfer::{is_terminal, state_key};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::GatewayError;
use crate::flow;
use crate::ledger::Ledger;
use crate::windows::Metric;
use crate::working::Work;

type Move = (TransferState, Transfer);

/// Where a relayed message goes: a node's signalling stream.
pub type Tx = mpsc::UnboundedSender<Result<TransferSignalsResponse, Status>>;

/// What one decision of the switchboard owes: the moves to record, then the
/// messages that relay them.
#[derive(Default)]
pub struct Entry {
    moves: Vec<Move>,
    sends: Vec<(Tx, Transfer)>,
}

impl Entry {
    /// Records that `t` moved from `from` to its state now.
    pub fn record(&mut self, from: TransferState, t: Transfer) {
        self.moves.push((from, t));
    }

    /// Relays `t` on `tx` once what this entry records is committed.
    pub fn send(&mut self, tx: &Tx, t: Transfer) {
        self.sends.push((tx.clone(), t));
    }

    fn is_empty(&self) -> bool {
        self.moves.is_empty() && self.sends.is_empty()
    }
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Entry>,
}

/// How long the recorder keeps trying to write one batch before it gives
/// its messages up (the transfers then end by their deadlines).
const GIVE_UP: std::time::Duration = std::time::Duration::from_secs(10);

impl Recorder {
    /// Starts the writing task.
    pub fn start(ledger: Ledger) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(run(ledger, rx)))
    }

    /// Queues a decision's moves and messages, behind every earlier one.
    /// Called under the switchboard's lock, so the order is the
    /// switchboard's.
    pub fn submit(&self, entry: Entry) {
        if !entry.is_empty() {
            let _ = self.tx.send(entry);
        }
    }
}

async fn run(ledger: Ledger, mut rx: mpsc::UnboundedReceiver<Entry>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let mut entries = std::mem::take(&mut batch);
        let moves: Vec<Move> = entries
            .iter_mut()
            .flat_map(|e| std::mem::take(&mut e.moves))
            .collect();
        if !moves.is_empty() {
            if !persist(&ledger, moves.into()).await {
                // Not in the ledger: relayed to no one.
                continue;
            }
            ledger.bell().ring();
        }
        for entry in entries {
            for (tx, t) in entry.sends {
                let _ = tx.send(Ok(TransferSignalsResponse { transfer: Some(t) }));
            }
        }
    }
}

/// Writes `moves` in one transaction, trying again after a passing failure
/// until [`GIVE_UP`]; says whether they are committed.
async fn persist(ledger: &Ledger, moves: std::sync::Arc<[Move]>) -> bool {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(20);
    loop {
        let batch = moves.clone();
        let result = ledger
            .write(move |w| {
                for (from, t) in batch.iter() {
                    write(w, *from, t)?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => return true,
            Err(e) if started.elapsed() < GIVE_UP => {
                tracing::warn!(error = %e, "cannot record transfer moves yet; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            Err(e) => {
                tracing::error!(error = %e, moves = moves.len(),
                    "cannot record transfer moves: they are not relayed, and end by their deadlines");
                return false;
            }
        }
    }
}

fn ms(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(time::to_unix_ms)
}

fn write(w: &mut Work<'_>, from: TransferState, t: &Transfer) -> Result<(), GatewayError> {
    let c = w.c;
    let to = TransferState::try_from(t.state).unwrap_or(TransferState::Unspecified);
    let now = time::now_ms();
    let ended = is_terminal(to).then(|| ms(&t.end_time).unwrap_or(now));
    c.write(
        "INSERT INTO transfers (id, origin, target, category, state, reason, created_ms, answered_ms, ended_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, reason = excluded.reason,
           answered_ms = excluded.answered_ms, ended_ms = excluded.ended_ms, body = excluded.body",
        params![
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
    ],
    )?;
    let fold = &mut w.st.fold;
    let mut count = |city: &str, m: Metric, detail: &str, n: i64| {
        fold.count(now, city, &t.category, m, detail, n)
    };
    if from == TransferState::Initiated {
        count(&t.origin_city, Metric::TransfersOut, &t.target_city, 1);
        count(&t.target_city, Metric::TransfersIn, &t.origin_city, 1);
    }
    if to == TransferState::Answered {
        let waited = ms(&t.answer_time)
            .unwrap_or(now)
            .saturating_sub(ms(&t.create_time).unwrap_or(now))
            .max(0);
        count(&t.target_city, Metric::TransfersAnswered, "", 1);
        count(&t.target_city, Metric::AnswerMsSum, "", waited);
    }
    if is_terminal(to) {
        count(&t.target_city, Metric::TransferOutcome, state_key(to), 1);
    }
    w.st.fold.flow(now, flow::transfer(t));
    Ok(())
}

/// At start: every transfer the ledger still shows live ended with the
/// gateway that held it.
pub fn fail_unfinished(w: &mut Work<'_>) -> Result<usize, GatewayError> {
    let mut stmt =
        w.c.prepare("SELECT body FROM transfers WHERE ended_ms IS NULL")?;
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
        write(w, from, &t)?;
        n += 1;
    }
    Ok(n)
}
