//! One reader of the flow log for every watcher.
//!
//! A `WatchFlow` stream used to read the log itself, on every commit and
//! every 250 ms besides: ten thousand watchers were ten thousand reads a
//! quarter second, each on a database connection. Now one task per gateway
//! reads what the ledger commits ([`FlowTail::spawn`]): woken by the
//! ledger's bell, and every [`POLL`] for what another replica of a shared
//! ledger wrote. It keeps the newest [`KEPT`] events in memory and tells
//! the watchers how far it has read. A watcher takes its events from there
//! ([`FlowTail::after`]); only one further behind (a replay, or one too
//! slow to keep up) reads the log, from its own cursor, until it has caught
//! up. Every watcher still sees each event once, in the log's order: the
//! tail reads the log exactly as a watcher did ([`flow::after`]). With no
//! watcher the tail reads nothing (a commit then costs no read of the log)
//! and starts again at the log's end when one comes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotline_durable::db::Db;
use hotline_proto::pb::FlowEvent;
use tokio::sync::watch;

use crate::error::GatewayError;
use crate::flow::{self, Bell};

/// Events kept in memory: a few seconds of a busy federation.
pub const KEPT: usize = 4_096;
/// The tail looks at the log this often even when no commit rang here.
pub const POLL: Duration = Duration::from_millis(250);
/// Events read from the log at a time.
pub const BATCH: usize = 512;

#[derive(Clone)]
pub struct FlowTail {
    kept: Arc<Mutex<Kept>>,
    /// The cursor of the last event read; changes as the tail reads on.
    head: watch::Receiver<u64>,
    /// Told when a watcher comes, to wake an idle tail.
    wanted: Arc<tokio::sync::Notify>,
    db: Db,
}

/// The newest events, and the cursor they follow: every event of the log
/// after `base` up to the newest is in `events`.
#[derive(Default)]
struct Kept {
    base: u64,
    events: VecDeque<FlowEvent>,
}

impl Kept {
    fn push(&mut self, batch: Vec<FlowEvent>) {
        for e in batch {
            if self.events.len() == KEPT
                && let Some(old) = self.events.pop_front()
            {
                self.base = old.cursor;
            }
            self.events.push_back(e);
        }
    }

    /// Up to `limit` events after `cursor`, if they are all here.
    fn after(&self, cursor: u64, limit: usize) -> Option<Vec<FlowEvent>> {
        if cursor < self.base {
            return None;
        }
        let start = self.events.partition_point(|e| e.cursor <= cursor);
        Some(self.events.range(start..).take(limit).cloned().collect())
    }
}

impl FlowTail {
    /// Starts the tail at the log's end; it reads until `closing` is set.
    pub async fn spawn(
        db: Db,
        bell: &Bell,
        mut closing: watch::Receiver<bool>,
    ) -> Result<Self, GatewayError> {
        let start = db
            .read(|c| Ok::<_, GatewayError>(flow::bounds(c)?.map(|(_, hi)| hi).unwrap_or(0)))
            .await?;
        let kept = Arc::new(Mutex::new(Kept {
            base: start,
            events: VecDeque::new(),
        }));
        let (head_tx, head) = watch::channel(start);
        let mut rang = bell.subscribe();
        let wanted = Arc::new(tokio::sync::Notify::new());
        let tail = Self {
            kept: kept.clone(),
            head,
            wanted: wanted.clone(),
            db: db.clone(),
        };
        tokio::spawn(async move {
            let mut at = start;
            // Nobody watching (only the service's own receiver): the tail
            // reads nothing, so that a commit costs no read of the log; once
            // a watcher comes, it starts again at the log's end.
            let mut stale = false;
            loop {
                if *closing.borrow() {
                    return;
                }
                if head_tx.receiver_count() <= 1 {
                    stale = true;
                    tokio::select! {
                        _ = wanted.notified() => {}
                        _ = closing.changed() => {}
                    }
                    continue;
                }
                if stale {
                    let end = db
                        .read(|c| {
                            Ok::<_, GatewayError>(flow::bounds(c)?.map(|(_, hi)| hi).unwrap_or(0))
                        })
                        .await;
                    if let Ok(end) = end {
                        at = end.max(at);
                        let mut k = lock(&kept);
                        k.base = at;
                        k.events.clear();
                        drop(k);
                        let _ = head_tx.send(at);
                        stale = false;
                    }
                }
                let from = at;
                let batch = db.read(move |c| flow::after(c, from, BATCH)).await;
                let batch: Vec<FlowEvent> = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        // A watcher reads the log itself meanwhile (it is
                        // behind the kept events' end only until the next
                        // read here succeeds).
                        tracing::warn!(error = %e, "the flow tail cannot read the log; retrying");
                        Vec::new()
                    }
                };
                let full = batch.len() == BATCH;
                if let Some(last) = batch.last() {
                    at = last.cursor;
                    lock(&kept).push(batch);
                    let _ = head_tx.send(at);
                }
                if full {
                    continue;
                }
                tokio::select! {
                    _ = rang.changed() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = closing.changed() => {}
                }
            }
        });
        Ok(tail)
    }

    /// Up to [`BATCH`] events after `cursor`: from memory, or from the log
    /// for a watcher behind what memory keeps. Empty when there is nothing
    /// newer yet ([`FlowTail::changed`] waits for it).
    pub async fn after(&self, cursor: u64) -> Result<Vec<FlowEvent>, GatewayError> {
        if let Some(events) = lock(&self.kept).after(cursor, BATCH) {
            return Ok(events);
        }
        self.db.read(move |c| flow::after(c, cursor, BATCH)).await
    }

    /// A receiver of how far the tail has read, to wait for more.
    pub fn head(&self) -> watch::Receiver<u64> {
        let head = self.head.clone();
        self.wanted.notify_one();
        head
    }
}

fn lock(kept: &Mutex<Kept>) -> std::sync::MutexGuard<'_, Kept> {
    kept.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(cursor: u64) -> FlowEvent {
        FlowEvent {
            cursor,
            ..FlowEvent::default()
        }
    }

    fn cursors(events: &[FlowEvent]) -> Vec<u64> {
        events.iter().map(|e| e.cursor).collect()
    }

    #[test]
    fn kept_events_answer_a_cursor_at_or_after_their_base_and_no_other() {
        let mut kept = Kept {
            base: 10,
            events: VecDeque::new(),
        };
        // Cursors need not be consecutive (a rolled-back write's number).
        kept.push(vec![event(11), event(12), event(14)]);
        assert_eq!(cursors(&kept.after(10, 10).unwrap()), [11, 12, 14]);
        assert_eq!(cursors(&kept.after(12, 10).unwrap()), [14]);
        assert_eq!(cursors(&kept.after(11, 1).unwrap()), [12]);
        assert!(kept.after(14, 10).unwrap().is_empty(), "nothing newer yet");
        assert!(kept.after(9, 10).is_none(), "event 10 is not kept");
    }

    #[test]
    fn the_oldest_go_first_and_the_base_follows_them() {
        let mut kept = Kept::default();
        kept.push((1..=KEPT as u64 + 3).map(event).collect());
        assert_eq!(kept.events.len(), KEPT);
        assert_eq!(kept.base, 3, "events 1 to 3 went");
        assert!(kept.after(2, 1).is_none());
        assert_eq!(cursors(&kept.after(3, 1).unwrap()), [4]);
    }
}
