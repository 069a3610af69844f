//! Call transfers at a node (一键互转, 三方通话): the node's side of the
//! signalling.
//!
//! As the **origin**, the node starts a transfer for one of its operators,
//! sends it to the gateway, lets the operator cancel it before an answer or
//! complete it (hand over) after one, and turns a failed one into a ticket.
//! As the **target**, it routes an offered transfer to an available operator
//! who takes the category, the longest idle first; a ring that times out or
//! is declined moves to the next operator; when none is left the transfer
//! ends (DECLINED, TIMED_OUT, or FAILED with reason "no-operator").
//!
//! Every move is checked against the contract's state machine, applied here
//! at once (so a console rings without a round trip), and sent to the
//! gateway, whose order wins: a transfer the gateway sends back is adopted
//! as it stands. Both operators always learn the end: a lost gateway stream
//! fails every live transfer here, a lost console fails or hands over the
//! transfers of its operator, and a sweep fails what outlives its deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hotline_durable::{Db, Outbox};
use hotline_proto::pb::operator_session_response::Event;
use hotline_proto::pb::transfer_signals_request::Signal;
use hotline_proto::pb::{
    Channel, OperatorHello, Priority, StartTransferRequest, Ticket, TicketKind, Transfer,
    TransferMode, TransferSignalsRequest, TransferState,
};
use hotline_proto::transfer::{self, Party};
use hotline_proto::{Catalogue, ContractError, TicketId, time, validate};
use tokio::sync::{mpsc, watch};

use crate::error::NodeError;
use crate::lifecycle;
use crate::operators::{Operators, SessionTx};
use crate::store::GATEWAY;

type Result<T, E = NodeError> = std::result::Result<T, E>;

/// Extra time past a transfer's deadline before the node fails it by itself
/// (the gateway times it out first when it can).
const DEADLINE_GRACE: Duration = Duration::from_secs(3);
/// How long ended transfers are kept, for `GetTransfer` and conversion.
const KEEP_ENDED: Duration = Duration::from_secs(3600);

/// Timings of the node's signalling.
#[derive(Debug, Clone, Copy)]
pub struct CallTimings {
    /// How long one operator's console rings before the next is tried.
    pub ring_timeout: Duration,
    /// How long a transfer may wait for an answer.
    pub answer_deadline: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Origin,
    Target,
}

struct Local {
    t: Transfer,
    role: Role,
    tried: Vec<String>,
    declined: u32,
    rang_out: u32,
    ring_attempt: u32,
    ended: Option<Instant>,
}

#[derive(Default)]
struct State {
    operators: Operators,
    transfers: HashMap<String, Local>,
    uplink: Option<mpsc::UnboundedSender<TransferSignalsRequest>>,
    next_session: u64,
}

#[derive(Clone)]
pub struct Calls {
    inner: Arc<Inner>,
}

struct Inner {
    city: String,
    catalogue: Arc<Catalogue>,
    timings: CallTimings,
    state: Mutex<State>,
    db: Db,
    outbox: Outbox,
    /// Set when the node stops: consoles' streams end, so that the server's
    /// graceful shutdown is not held by them.
    closing: watch::Sender<bool>,
}

fn state_of(t: &Transfer) -> TransferState {
    TransferState::try_from(t.state).unwrap_or(TransferState::Unspecified)
}

impl Calls {
    pub fn new(
        city: String,
        catalogue: Arc<Catalogue>,
        timings: CallTimings,
        db: Db,
        outbox: Outbox,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                city,
                catalogue,
                timings,
                state: Mutex::default(),
                db,
                outbox,
                closing: watch::channel(false).0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.inner.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn city(&self) -> &str {
        &self.inner.city
    }

    /// Resolves once the node is stopping; each console's reader waits on
    /// it beside the console's messages.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// The node is stopping: every live transfer fails (the gateway and the
    /// other city hear it while the link is still up), and every console's
    /// stream ends.
    pub fn close_all(&self) {
        self.inner.closing.send_replace(true);
        let mut st = self.lock();
        let live: Vec<String> = st
            .transfers
            .iter()
            .filter(|(_, l)| l.ended.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in live {
            self.make(&mut st, &id, TransferState::Failed, "node-stopping");
        }
        st.operators.clear();
    }

    // ----- consoles -----

    /// A console said hello; returns its session number.
    pub fn open_session(&self, hello: &OperatorHello, tx: SessionTx) -> Result<u64> {
        validate::text("hello.operator_id", &hello.operator_id, 64, true)?;
        for (i, c) in hello.categories.iter().enumerate() {
            validate::category(&format!("hello.categories[{i}]"), c, &self.inner.catalogue)?;
        }
        if *self.inner.closing.borrow() {
            return Err(NodeError::Unavailable("the node is stopping".into()));
        }
        let mut st = self.lock();
        st.next_session += 1;
        let session = st.next_session;
        st.operators.register(
            &hello.operator_id,
            session,
            tx,
            hello.categories.clone(),
            hello.available,
        );
        st.operators
            .notify(&hello.operator_id, Event::Registered(hello.clone()));
        tracing::info!(city = %self.inner.city, operator = %hello.operator_id, "console connected");
        Ok(session)
    }

    pub fn set_available(&self, operator: &str, session: u64, available: bool) {
        let mut st = self.lock();
        if let Some(c) = st.operators.get_mut(operator)
            && c.session == session
        {
            c.available = available;
        }
    }

    /// A console's stream ended: the operator is unavailable, and the
    /// transfers they were part of go on without them or end.
    pub fn close_session(&self, operator: &str, session: u64) {
        let mut st = self.lock();
        if !st.operators.unregister(operator, session) {
            return;
        }
        tracing::info!(city = %self.inner.city, operator, "console gone");
        let ids: Vec<String> = st
            .transfers
            .iter()
            .filter(|(_, l)| l.ended.is_none())
            .filter(|(_, l)| match l.role {
                Role::Origin => l.t.origin_operator == operator,
                Role::Target => l.t.target_operator == operator,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(l) = st.transfers.get(&id) else {
                continue;
            };
            let (role, s) = (l.role, state_of(&l.t));
            match (role, s) {
                (Role::Target, TransferState::Ringing) => {
                    if let Some(l) = st.transfers.get_mut(&id) {
                        l.rang_out += 1;
                    }
                    self.route(&mut st, &id);
                }
                (Role::Origin, TransferState::Answered | TransferState::Conferenced) => {
                    // The citizen is with the target operator: handed over.
                    self.make(&mut st, &id, TransferState::Completed, "origin-dropped");
                }
                _ => self.make(&mut st, &id, TransferState::Failed, "console-lost"),
            }
        }
    }

    // ----- the gateway link -----

    pub fn link_up(&self, tx: mpsc::UnboundedSender<TransferSignalsRequest>) {
        self.lock().uplink = Some(tx);
        tracing::info!(city = %self.inner.city, "transfer signalling linked to the gateway");
    }

    /// The gateway stream ended — lost, or closed because this node stops:
    /// every live transfer here fails.
    pub fn link_down(&self, stopping: bool) {
        let mut st = self.lock();
        if st.uplink.take().is_none() {
            return;
        }
        if stopping {
            tracing::info!(city = %self.inner.city, "transfer signalling closed: the node stops");
        } else {
            tracing::warn!(city = %self.inner.city, "transfer signalling lost the gateway");
        }
        let ids: Vec<String> = st
            .transfers
            .iter()
            .filter(|(_, l)| l.ended.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.settle(&mut st, &id, TransferState::Failed, "gateway-lost");
        }
    }

    /// A transfer as the gateway has it now.
    pub fn on_signal(&self, t: Transfer) {
        let mut st = self.lock();
        let to = state_of(&t);
        let Some(local) = st.transfers.get_mut(&t.id) else {
            if t.target_city == self.inner.city && to == TransferState::Offered {
                let id = t.id.clone();
                st.transfers.insert(
                    id.clone(),
                    Local {
                        t,
                        role: Role::Target,
                        tried: Vec::new(),
                        declined: 0,
                        rang_out: 0,
                        ring_attempt: 0,
                        ended: None,
                    },
                );
                self.route(&mut st, &id);
            }
            return;
        };
        if local.ended.is_some() {
            // Ended here by a move the gateway ordered after another end
            // (an answer racing a cancel): the gateway's order wins, so
            // both sides and both operators agree on how it ended.
            if transfer::is_terminal(to) && state_of(&local.t) != to {
                let context = local.t.context.take();
                let origin = local.role == Role::Origin;
                local.t = t;
                if origin {
                    local.t.context = context;
                }
                let id = local.t.id.clone();
                self.tell_operators(&st, &id);
            }
            return;
        }
        let before = local.t.clone();
        // The gateway's order wins; the origin keeps the caller's data it
        // never sent.
        let context = local.t.context.take();
        local.t = t;
        if local.role == Role::Origin {
            local.t.context = context;
        }
        let role = local.role;
        let id = local.t.id.clone();
        if role == Role::Target
            && !before.target_operator.is_empty()
            && before.target_operator != local.t.target_operator
        {
            let op = before.target_operator.clone();
            st.operators.free(&op, &id, false);
        }
        if transfer::is_terminal(to) {
            self.finish(&mut st, &id);
        }
        self.tell_operators(&st, &id);
    }

    // ----- operators' actions -----

    /// One click: starts a transfer of `req.operator_id`'s call.
    pub fn start(&self, req: StartTransferRequest) -> Result<Transfer> {
        let cat = &self.inner.catalogue;
        validate::text("operator_id", &req.operator_id, 64, true)?;
        validate::city("target_city", &req.target_city, cat)?;
        if req.target_city == self.inner.city {
            return Err(ContractError::invalid(
                "target_city",
                "is this city; a transfer goes to another city",
            )
            .into());
        }
        validate::category("category", &req.category, cat)?;
        match TransferMode::try_from(req.mode) {
            Ok(TransferMode::Unspecified) => {
                return Err(ContractError::invalid("mode", "is required").into());
            }
            Err(_) => return Err(ContractError::invalid("mode", "unknown value").into()),
            Ok(_) => {}
        }
        let context = req.context.unwrap_or_default();
        validate::text("context.caller_ref", &context.caller_ref, 128, false)?;
        validate::text(
            "context.summary",
            &context.summary,
            validate::MAX_DESCRIPTION,
            false,
        )?;
        let mut st = self.lock();
        if !st.operators.has(&req.operator_id) {
            return Err(NodeError::FailedPrecondition(format!(
                "operator {} has no console session at this node",
                req.operator_id
            )));
        }
        if st.uplink.is_none() {
            return Err(NodeError::Unavailable(
                "the gateway cannot be reached now; convert the call to a ticket instead".into(),
            ));
        }
        let now = time::now_ms();
        let t = Transfer {
            id: TicketId::new(&self.inner.city).to_string(),
            origin_city: self.inner.city.clone(),
            target_city: req.target_city,
            category: req.category,
            mode: req.mode,
            origin_operator: req.operator_id,
            state: TransferState::Initiated as i32,
            context: Some(context),
            create_time: Some(time::from_unix_ms(now)),
            deadline: Some(time::from_unix_ms(
                now + self.inner.timings.answer_deadline.as_millis() as i64,
            )),
            ..Default::default()
        };
        tracing::info!(transfer = %t.id, target = %t.target_city, category = %t.category, "transfer started");
        let id = t.id.clone();
        st.transfers.insert(
            id.clone(),
            Local {
                t: t.clone(),
                role: Role::Origin,
                tried: Vec::new(),
                declined: 0,
                rang_out: 0,
                ring_attempt: 0,
                ended: None,
            },
        );
        self.send_up(&st, &t);
        self.tell_operators(&st, &id);
        Ok(t)
    }

    fn mine(&self, st: &State, operator: &str, id: &str, role: Role) -> Result<TransferState> {
        let l = st
            .transfers
            .get(id)
            .ok_or_else(|| NodeError::UnknownTransfer(id.to_owned()))?;
        let (who, side) = match role {
            Role::Origin => (&l.t.origin_operator, "started"),
            Role::Target => (&l.t.target_operator, "rung or answered"),
        };
        if l.role != role || who != operator {
            return Err(NodeError::PermissionDenied(format!(
                "transfer {id} was not {side} by operator {operator}"
            )));
        }
        Ok(state_of(&l.t))
    }

    fn refuse(id: &str, s: TransferState, what: &str) -> NodeError {
        NodeError::FailedPrecondition(format!(
            "transfer {id} is {}; it cannot be {what}",
            transfer::state_key(s)
        ))
    }

    pub fn answer(&self, operator: &str, id: &str) -> Result<Transfer> {
        let mut st = self.lock();
        let s = self.mine(&st, operator, id, Role::Target)?;
        if s != TransferState::Ringing {
            return Err(Self::refuse(id, s, "answered"));
        }
        let mode = st
            .transfers
            .get(id)
            .and_then(|l| TransferMode::try_from(l.t.mode).ok())
            .unwrap_or(TransferMode::Warm);
        if let Some(l) = st.transfers.get_mut(id) {
            l.t.answer_time = Some(time::now());
            l.t.bridge_ref = format!("bridge:{}:{}", l.t.id, operator);
        }
        self.make(&mut st, id, TransferState::Answered, "");
        let then = transfer::after_answer(mode);
        if then != TransferState::Answered {
            self.make(&mut st, id, then, "");
        }
        self.snapshot(&st, id)
    }

    pub fn decline(&self, operator: &str, id: &str) -> Result<Transfer> {
        let mut st = self.lock();
        let s = self.mine(&st, operator, id, Role::Target)?;
        if s != TransferState::Ringing {
            return Err(Self::refuse(id, s, "declined"));
        }
        st.operators.free(operator, id, false);
        if let Some(l) = st.transfers.get_mut(id) {
            l.declined += 1;
        }
        let declined = self.snapshot(&st, id)?;
        st.operators
            .notify(operator, Event::Update(declined.clone()));
        self.route(&mut st, id);
        Ok(declined)
    }

    pub fn cancel(&self, operator: &str, id: &str) -> Result<Transfer> {
        let mut st = self.lock();
        let s = self.mine(&st, operator, id, Role::Origin)?;
        if !transfer::can_move(s, TransferState::Cancelled) {
            return Err(Self::refuse(id, s, "cancelled"));
        }
        self.make(&mut st, id, TransferState::Cancelled, "cancelled");
        self.snapshot(&st, id)
    }

    pub fn complete(&self, operator: &str, id: &str) -> Result<Transfer> {
        let mut st = self.lock();
        let s = self.mine(&st, operator, id, Role::Origin)?;
        if !transfer::can_move(s, TransferState::Completed) {
            return Err(Self::refuse(id, s, "completed"));
        }
        self.make(&mut st, id, TransferState::Completed, "");
        self.snapshot(&st, id)
    }

    pub fn get(&self, id: &str) -> Result<Transfer> {
        let st = self.lock();
        self.snapshot(&st, id)
    }

    /// A failed transfer becomes a ticket for the target city, once.
    pub async fn convert(&self, operator: &str, id: &str, note: String) -> Result<Ticket> {
        validate::text("note", &note, validate::MAX_NOTE, false)?;
        let t = {
            let st = self.lock();
            let s = self.mine(&st, operator, id, Role::Origin)?;
            if !transfer::is_terminal(s) || s == TransferState::Completed {
                return Err(Self::refuse(
                    id,
                    s,
                    "converted to a ticket (only a failed transfer is)",
                ));
            }
            self.snapshot(&st, id)?
        };
        let context = t.context.clone().unwrap_or_default();
        let summary: String = if context.summary.trim().is_empty() {
            "来电转接未接通，转为工单".to_owned()
        } else {
            context
                .summary
                .chars()
                .take(validate::MAX_SUBJECT)
                .collect()
        };
        let description: String = format!(
            "{}\n{}（转接 {}，{}）",
            context.summary, note, t.id, t.reason
        )
        .chars()
        .take(validate::MAX_DESCRIPTION)
        .collect();
        let draft = Ticket {
            target_cities: vec![t.target_city.clone()],
            category: t.category.clone(),
            kind: TicketKind::Help as i32,
            channel: Channel::CallTransfer as i32,
            priority: Priority::Normal as i32,
            citizen: context.caller.clone(),
            subject: summary,
            description,
            request_id: format!("transfer:{}", t.id),
            ..Default::default()
        };
        validate::new_ticket(&draft, &self.inner.city, &self.inner.catalogue)?;
        let city = self.inner.city.clone();
        // Converted again (a retry): the same ticket, by the request id.
        let lifecycle::Created { ticket, queued, .. } = self
            .inner
            .db
            .write(move |c| lifecycle::create(c, &city, draft))
            .await?;
        if queued {
            self.inner.outbox.wake(GATEWAY);
        }
        let mut st = self.lock();
        if let Some(l) = st.transfers.get_mut(id) {
            l.t.ticket_id = ticket.id.clone();
        }
        self.tell_operators(&st, id);
        tracing::info!(transfer = %id, ticket = %ticket.id, "failed transfer converted to a ticket");
        Ok(ticket)
    }

    /// Fails transfers past their deadline (the gateway's sweep normally
    /// ends them first) and forgets old ended ones.
    pub fn sweep(&self) {
        let now = time::now_ms();
        let grace = DEADLINE_GRACE.as_millis() as i64;
        let mut st = self.lock();
        let late: Vec<String> = st
            .transfers
            .iter()
            .filter(|(_, l)| l.ended.is_none())
            .filter(|(_, l)| {
                matches!(
                    state_of(&l.t),
                    TransferState::Initiated | TransferState::Offered | TransferState::Ringing
                ) && l
                    .t
                    .deadline
                    .as_ref()
                    .map(time::to_unix_ms)
                    .unwrap_or(i64::MAX)
                    + grace
                    < now
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            self.make(&mut st, &id, TransferState::TimedOut, "deadline");
        }
        st.transfers
            .retain(|_, l| l.ended.is_none_or(|at| at.elapsed() < KEEP_ENDED));
    }

    // ----- the machinery -----

    fn snapshot(&self, st: &State, id: &str) -> Result<Transfer> {
        st.transfers
            .get(id)
            .map(|l| l.t.clone())
            .ok_or_else(|| NodeError::UnknownTransfer(id.to_owned()))
    }

    /// Moves a transfer here, tells the gateway and the operators.
    fn make(&self, st: &mut State, id: &str, to: TransferState, reason: &str) {
        let Some(l) = st.transfers.get_mut(id) else {
            return;
        };
        let party = match l.role {
            Role::Origin => Party::Origin,
            Role::Target => Party::Target,
        };
        let from = state_of(&l.t);
        if from != to && !transfer::may_move(party, from, to) {
            tracing::warn!(transfer = %id, from = ?from, to = ?to, "move refused by the state machine");
            return;
        }
        l.t.state = to as i32;
        if !reason.is_empty() {
            l.t.reason = reason.to_owned();
        }
        if transfer::is_terminal(to) {
            l.t.end_time = Some(time::now());
        }
        let t = l.t.clone();
        self.send_up(st, &t);
        if transfer::is_terminal(to) {
            self.finish(st, id);
        }
        self.tell_operators(st, id);
    }

    /// Ends a transfer here only (the gateway is gone).
    fn settle(&self, st: &mut State, id: &str, to: TransferState, reason: &str) {
        if let Some(l) = st.transfers.get_mut(id) {
            l.t.state = to as i32;
            l.t.reason = reason.to_owned();
            l.t.end_time = Some(time::now());
        }
        self.finish(st, id);
        self.tell_operators(st, id);
    }

    fn finish(&self, st: &mut State, id: &str) {
        let Some(l) = st.transfers.get_mut(id) else {
            return;
        };
        l.ended = Some(Instant::now());
        if l.role == Role::Target && !l.t.target_operator.is_empty() {
            let op = l.t.target_operator.clone();
            let was_on_call = l.t.answer_time.is_some();
            st.operators.free(&op, id, was_on_call);
        }
    }

    fn tell_operators(&self, st: &State, id: &str) {
        let Some(l) = st.transfers.get(id) else {
            return;
        };
        let op = match l.role {
            Role::Origin => &l.t.origin_operator,
            Role::Target => &l.t.target_operator,
        };
        if !op.is_empty() {
            st.operators.notify(op, Event::Update(l.t.clone()));
        }
    }

    fn send_up(&self, st: &State, t: &Transfer) {
        let mut out = t.clone();
        if let Some(c) = out.context.as_mut()
            && let Some(caller) = c.caller.as_mut()
        {
            // The other side need not see the caller's contact.
            *caller = caller.masked();
        }
        if let Some(up) = &st.uplink {
            let _ = up.send(TransferSignalsRequest {
                signal: Some(Signal::Transfer(out)),
            });
        }
    }

    /// Rings the next operator for a transfer offered here, or ends it.
    fn route(&self, st: &mut State, id: &str) {
        let Some(l) = st.transfers.get(id) else {
            return;
        };
        if l.ended.is_some() {
            return;
        }
        match st.operators.pick(&l.t.category, &l.tried) {
            Some(op) => {
                let attempt = {
                    let Some(l) = st.transfers.get_mut(id) else {
                        return;
                    };
                    l.tried.push(op.clone());
                    l.ring_attempt += 1;
                    l.t.target_operator = op.clone();
                    l.t.attempts += 1;
                    l.ring_attempt
                };
                if let Some(c) = st.operators.get_mut(&op) {
                    c.busy = Some(id.to_owned());
                }
                self.make(st, id, TransferState::Ringing, "");
                if let Some(l) = st.transfers.get(id) {
                    st.operators.notify(&op, Event::Ringing(l.t.clone()));
                }
                let calls = self.clone();
                let id = id.to_owned();
                let wait = self.inner.timings.ring_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    calls.ring_expired(&id, attempt);
                });
            }
            None => {
                let (to, reason) = if l.tried.is_empty() {
                    (TransferState::Failed, "no-operator")
                } else if l.rang_out == 0 {
                    (TransferState::Declined, "declined")
                } else {
                    (TransferState::TimedOut, "ring-timeout")
                };
                self.make(st, id, to, reason);
            }
        }
    }

    fn ring_expired(&self, id: &str, attempt: u32) {
        let mut st = self.lock();
        let Some(l) = st.transfers.get_mut(id) else {
            return;
        };
        if l.ended.is_some()
            || l.ring_attempt != attempt
            || state_of(&l.t) != TransferState::Ringing
        {
            return;
        }
        l.rang_out += 1;
        let op = l.t.target_operator.clone();
        let stopped = l.t.clone();
        st.operators.free(&op, id, false);
        st.operators.notify(&op, Event::Update(stopped));
        self.route(&mut st, id);
    }
}
