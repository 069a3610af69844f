//! The gateway's switchboard: call-transfer signalling between the nodes.
//!
//! Each node keeps one long-lived stream open to the gateway
//! (`Federation.TransferSignals`). The switchboard holds the live transfers
//! in memory and is the one order of each transfer's moves: a node proposes
//! a move by sending the transfer as it now sees it; the switchboard checks
//! it against the state machine of the contract crate (who may make which
//! move), applies it, has it recorded in the ledger, and relays it to the
//! other city once it is committed ([`crate::recorder`]). A move it cannot
//! take is answered with the transfer as it stands, which the proposer
//! adopts.
//!
//! Every transfer ends by a deadline whatever crashes: a lost stream fails
//! the live transfers of its city and tells the other city; a sweep times
//! out unanswered transfers past their deadline and completes answered ones
//! past the completion allowance; a restarted gateway fails what its ledger
//! still shows live (the nodes fail their side when the stream drops).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hotline_proto::pb::{Transfer, TransferMode, TransferState};
use hotline_proto::transfer::{self, Party};
use hotline_proto::{Catalogue, time};
use tokio::sync::watch;

use crate::recorder::{Entry, Recorder, Tx};

/// The longest a node may ask a transfer to wait for an answer.
pub const MAX_DEADLINE: Duration = Duration::from_secs(600);
/// How long terminal transfers are remembered, to answer late signals.
const KEEP_FINISHED: Duration = Duration::from_secs(120);

struct Link {
    id: u64,
    tx: Tx,
}

#[derive(Default)]
struct State {
    links: HashMap<String, Link>,
    live: HashMap<String, Transfer>,
    finished: HashMap<String, (Transfer, i64)>,
    next_link: u64,
}

#[derive(Clone)]
pub struct Switchboard {
    state: Arc<Mutex<State>>,
    catalogue: Arc<Catalogue>,
    recorder: Recorder,
    completion_allowance: Duration,
    /// Set when the gateway stops: the nodes' streams end, so that the
    /// server's graceful shutdown is not held by them.
    closing: Arc<watch::Sender<bool>>,
    /// Whether this process holds the switchboard: alone on its ledger from
    /// the start; among replicas, the one holding the leader lease.
    held: Arc<watch::Sender<bool>>,
}

/// Relays `t` to `city` once `out` is committed; false when the city has no
/// open stream.
fn send(out: &mut Entry, links: &HashMap<String, Link>, city: &str, t: &Transfer) -> bool {
    match links.get(city) {
        Some(link) if !link.tx.is_closed() => {
            out.send(&link.tx, t.clone());
            true
        }
        _ => false,
    }
}

/// The first text of a transfer that is longer than a node would take, or
/// holds control characters, as the reason it fails: the gateway relays and
/// records nothing larger than the nodes' own API allows.
fn unfit(t: &Transfer) -> Option<&'static str> {
    use hotline_proto::validate::{
        MAX_DESCRIPTION, MAX_NAME, MAX_PHONE, MAX_REASON, MAX_WORD, text,
    };
    let context = t.context.as_ref();
    let caller = context.and_then(|c| c.caller.as_ref());
    let texts: [(&'static str, &str, usize); 9] = [
        (
            "invalid: context.caller.name",
            caller.map_or("", |c| c.name.as_str()),
            MAX_NAME,
        ),
        (
            "invalid: context.caller.phone",
            caller.map_or("", |c| c.phone.as_str()),
            MAX_PHONE,
        ),
        (
            "invalid: context.summary",
            context.map_or("", |c| c.summary.as_str()),
            MAX_DESCRIPTION,
        ),
        (
            "invalid: context.caller_ref",
            context.map_or("", |c| c.caller_ref.as_str()),
            MAX_WORD,
        ),
        ("invalid: reason", &t.reason, MAX_REASON),
        ("invalid: bridge_ref", &t.bridge_ref, MAX_WORD),
        ("invalid: origin_operator", &t.origin_operator, MAX_WORD),
        ("invalid: target_operator", &t.target_operator, MAX_WORD),
        ("invalid: ticket_id", &t.ticket_id, MAX_WORD),
    ];
    texts
        .into_iter()
        .find(|(field, value, max)| text(field, value, *max, false).is_err())
        .map(|(field, _, _)| field)
}

fn state_of(t: &Transfer) -> TransferState {
    TransferState::try_from(t.state).unwrap_or(TransferState::Unspecified)
}

impl Switchboard {
    pub fn new(
        catalogue: Arc<Catalogue>,
        recorder: Recorder,
        completion_allowance: Duration,
    ) -> Self {
        Self {
            state: Arc::default(),
            catalogue,
            recorder,
            completion_allowance,
            closing: Arc::new(watch::channel(false).0),
            held: Arc::new(watch::channel(false).0),
        }
    }

    /// Whether this process holds the switchboard now.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Turns false when this process gives the switchboard up.
    pub fn held(&self) -> watch::Receiver<bool> {
        self.held.subscribe()
    }

    /// This process holds the switchboard from now on.
    pub fn take_over(&self) {
        self.held.send_replace(true);
    }

    /// Another replica holds the switchboard now: every live transfer here
    /// fails (told to both cities while their streams are open) and every
    /// stream ends, so the nodes reconnect to the replica that holds it.
    pub fn step_down(&self) {
        self.held.send_replace(false);
        self.fail_all("switchboard-moved");
    }

    /// Every live transfer fails (recorded, and told to both cities while
    /// their streams are still open), then every stream ends.
    fn fail_all(&self, reason: &str) {
        let mut st = self.lock();
        let mut out = Entry::default();
        let live: Vec<String> = st.live.keys().cloned().collect();
        for id in live {
            self.end(&mut st, &mut out, &id, TransferState::Failed, reason);
        }
        // The streams end once the recorder has sent what they are owed.
        st.links.clear();
        self.recorder.submit(out);
    }

    /// Resolves once the gateway is stopping; each stream's reader waits on
    /// it beside the node's messages.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// The gateway is stopping: every live transfer fails (recorded, and
    /// told to both cities while their streams are still open), then every
    /// stream ends.
    pub fn close_all(&self) {
        self.closing.send_replace(true);
        self.fail_all("gateway-stopping");
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A node's stream opened. A newer stream of the same city replaces an
    /// older one, whose transfers the node has already failed on its side.
    pub fn connect(&self, city: &str, tx: Tx) -> u64 {
        let mut st = self.lock();
        st.next_link += 1;
        let id = st.next_link;
        let replaced = st.links.insert(city.to_owned(), Link { id, tx }).is_some();
        if replaced {
            let mut out = Entry::default();
            self.fail_city(&mut st, &mut out, city, &format!("{city}-lost"));
            self.recorder.submit(out);
        }
        tracing::info!(city, "transfer signalling stream open");
        id
    }

    /// A node's stream ended: its live transfers fail, on both sides.
    /// `closed` when the node ended the stream in good order (it stops);
    /// otherwise the stream broke.
    pub fn disconnect(&self, city: &str, link: u64, closed: bool) {
        let mut st = self.lock();
        if st.links.get(city).is_some_and(|l| l.id == link) {
            st.links.remove(city);
            if closed {
                tracing::info!(city, "transfer signalling stream closed by the node");
            } else {
                tracing::warn!(city, "transfer signalling stream lost");
            }
            let mut out = Entry::default();
            self.fail_city(&mut st, &mut out, city, &format!("{city}-lost"));
            self.recorder.submit(out);
        }
    }

    fn fail_city(&self, st: &mut State, out: &mut Entry, city: &str, reason: &str) {
        let ids: Vec<String> = st
            .live
            .values()
            .filter(|t| t.origin_city == city || t.target_city == city)
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            self.end(st, out, &id, TransferState::Failed, reason);
        }
    }

    /// Moves a live transfer to a terminal state made by the gateway and
    /// tells both cities.
    fn end(&self, st: &mut State, out: &mut Entry, id: &str, to: TransferState, reason: &str) {
        let Some(mut t) = st.live.remove(id) else {
            return;
        };
        let from = state_of(&t);
        t.state = to as i32;
        t.reason = reason.to_owned();
        t.end_time = Some(time::now());
        out.record(from, t.clone());
        send(out, &st.links, &t.origin_city, &t);
        send(out, &st.links, &t.target_city, &t);
        st.finished.insert(t.id.clone(), (t, time::now_ms()));
    }

    /// A transfer as `city` now sees it.
    pub fn signal(&self, city: &str, incoming: Transfer) {
        let mut st = self.lock();
        let mut out = Entry::default();
        self.decide(&mut st, &mut out, city, incoming);
        // Under the lock: the recorder takes the decisions in their order.
        self.recorder.submit(out);
    }

    fn decide(&self, st: &mut State, out: &mut Entry, city: &str, incoming: Transfer) {
        let to = state_of(&incoming);
        let Some(current) = st.live.get(&incoming.id).cloned() else {
            if let Some((done, _)) = st.finished.get(&incoming.id) {
                // Too late: it has ended. Tell the sender how.
                let done = done.clone();
                send(out, &st.links, city, &done);
                return;
            }
            self.offer(st, out, city, incoming);
            return;
        };
        let party = if city == current.origin_city {
            Party::Origin
        } else if city == current.target_city {
            Party::Target
        } else {
            tracing::warn!(city, transfer = %current.id, "signal from a city not party to the transfer");
            return;
        };
        let from = state_of(&current);
        if from == to && to == TransferState::Ringing && party == Party::Target {
            // The next operator rings.
            let mut t = current;
            t.target_operator = incoming.target_operator;
            t.attempts = incoming.attempts;
            send(out, &st.links, &t.origin_city, &t);
            st.live.insert(t.id.clone(), t);
            return;
        }
        if from == to {
            return;
        }
        if !transfer::may_move(party, from, to) || unfit(&incoming).is_some() {
            // Not this party's move, or too late for it: the sender adopts
            // the transfer as it stands.
            send(out, &st.links, city, &current);
            return;
        }
        let mut t = current;
        t.state = to as i32;
        t.reason = incoming.reason;
        if party == Party::Target {
            t.target_operator = incoming.target_operator;
            t.attempts = incoming.attempts;
            t.bridge_ref = incoming.bridge_ref;
            if to == TransferState::Answered {
                t.answer_time = Some(time::now());
            }
        }
        let other = if party == Party::Origin {
            t.target_city.clone()
        } else {
            t.origin_city.clone()
        };
        out.record(from, t.clone());
        send(out, &st.links, &other, &t);
        if transfer::is_terminal(to) {
            st.live.remove(&t.id);
            t.end_time = Some(time::now());
            st.finished.insert(t.id.clone(), (t, time::now_ms()));
        } else {
            st.live.insert(t.id.clone(), t);
        }
    }

    /// A new transfer from its origin: checked, offered to the target city.
    fn offer(&self, st: &mut State, out: &mut Entry, city: &str, mut t: Transfer) {
        let invalid = if t.origin_city != city {
            Some("invalid: origin_city is not the sending city")
        } else if state_of(&t) != TransferState::Initiated {
            Some("unknown-transfer")
        } else if self.catalogue.city(&t.target_city).is_none() || t.target_city == city {
            Some("invalid: target_city")
        } else if self.catalogue.category(&t.category).is_none() {
            Some("invalid: category")
        } else if matches!(
            TransferMode::try_from(t.mode),
            Err(_) | Ok(TransferMode::Unspecified)
        ) {
            Some("invalid: mode")
        } else if hotline_proto::validate::ticket_id("transfer.id", &t.id).is_err() {
            Some("invalid: id")
        } else {
            unfit(&t)
        };
        if let Some(reason) = invalid {
            t.state = TransferState::Failed as i32;
            t.reason = reason.to_owned();
            send(out, &st.links, city, &t);
            return;
        }
        let now = time::now_ms();
        let latest = now + MAX_DEADLINE.as_millis() as i64;
        let deadline = t
            .deadline
            .as_ref()
            .map(time::to_unix_ms)
            .unwrap_or(latest)
            .min(latest);
        t.deadline = Some(time::from_unix_ms(deadline));
        t.state = TransferState::Offered as i32;
        if t.create_time.is_none() {
            t.create_time = Some(time::now());
        }
        out.record(TransferState::Initiated, t.clone());
        st.live.insert(t.id.clone(), t.clone());
        if !send(out, &st.links, &t.target_city, &t) {
            self.end(st, out, &t.id, TransferState::Failed, "target-unreachable");
            return;
        }
        send(out, &st.links, city, &t);
    }

    /// Times out unanswered transfers past their deadline, completes answered
    /// ones past the completion allowance, forgets old finished ones.
    pub fn sweep(&self) {
        let now = time::now_ms();
        let allowance = self.completion_allowance.as_millis() as i64;
        let mut st = self.lock();
        let mut due = Vec::new();
        for t in st.live.values() {
            let deadline = t
                .deadline
                .as_ref()
                .map(time::to_unix_ms)
                .unwrap_or(i64::MAX);
            let answered = matches!(
                state_of(t),
                TransferState::Answered | TransferState::Conferenced
            );
            // An answered call is never timed out: it is completed once the
            // origin operator has had the completion allowance to hand over.
            if answered && now > deadline.saturating_add(allowance) {
                due.push((
                    t.id.clone(),
                    TransferState::Completed,
                    "completion-deadline",
                ));
            } else if !answered && now > deadline {
                due.push((t.id.clone(), TransferState::TimedOut, "deadline"));
            }
        }
        let mut out = Entry::default();
        for (id, to, reason) in due {
            self.end(&mut st, &mut out, &id, to, reason);
        }
        self.recorder.submit(out);
        let keep = KEEP_FINISHED.as_millis() as i64;
        st.finished.retain(|_, (_, at)| now - *at < keep);
    }

    /// How many transfers are live now.
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotline_proto::pb::CallContext;

    #[test]
    fn a_transfer_text_larger_than_a_node_takes_is_unfit() {
        let mut t = Transfer {
            reason: "ring-timeout".into(),
            context: Some(CallContext {
                caller_ref: "c-1".into(),
                summary: "咨询社保转移".repeat(10),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(unfit(&t), None);
        if let Some(c) = t.context.as_mut() {
            c.summary = "x".repeat(hotline_proto::validate::MAX_DESCRIPTION + 1);
        }
        assert_eq!(unfit(&t), Some("invalid: context.summary"));
        t.context = None;
        t.bridge_ref = "b\u{1b}[2J".into();
        assert_eq!(unfit(&t), Some("invalid: bridge_ref"));
    }
}
