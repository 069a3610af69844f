//! The operators' consoles connected to this node: who is there, which
//! categories each takes, who is free, and since when (the longest idle is
//! rung first).

use std::collections::HashMap;
use std::time::Instant;

use hotline_proto::pb::OperatorSessionResponse;
use hotline_proto::pb::operator_session_response::Event;
use tokio::sync::mpsc;
use tonic::Status;

pub type SessionTx = mpsc::UnboundedSender<Result<OperatorSessionResponse, Status>>;

pub struct Console {
    pub session: u64,
    tx: SessionTx,
    /// Empty: every category.
    pub categories: Vec<String>,
    pub available: bool,
    /// The transfer ringing at, or answered by, this operator.
    pub busy: Option<String>,
    pub idle_since: Instant,
}

#[derive(Default)]
pub struct Operators {
    consoles: HashMap<String, Console>,
}

impl Operators {
    /// Registers a console; a new session of the same operator replaces the
    /// old one.
    pub fn register(
        &mut self,
        operator: &str,
        session: u64,
        tx: SessionTx,
        categories: Vec<String>,
        available: bool,
    ) {
        let busy = self.consoles.get(operator).and_then(|c| c.busy.clone());
        self.consoles.insert(
            operator.to_owned(),
            Console {
                session,
                tx,
                categories,
                available,
                busy,
                idle_since: Instant::now(),
            },
        );
    }

    /// Removes the console if `session` is still its session.
    pub fn unregister(&mut self, operator: &str, session: u64) -> bool {
        if self
            .consoles
            .get(operator)
            .is_some_and(|c| c.session == session)
        {
            self.consoles.remove(operator);
            return true;
        }
        false
    }

    /// Drops every console, ending their streams.
    pub fn clear(&mut self) {
        self.consoles.clear();
    }

    pub fn get_mut(&mut self, operator: &str) -> Option<&mut Console> {
        self.consoles.get_mut(operator)
    }

    pub fn has(&self, operator: &str) -> bool {
        self.consoles.contains_key(operator)
    }

    /// The operator to ring for `category`: available, free, taking the
    /// category, not tried yet; the longest idle first.
    pub fn pick(&self, category: &str, tried: &[String]) -> Option<String> {
        self.consoles
            .iter()
            .filter(|(id, c)| {
                c.available
                    && c.busy.is_none()
                    && (c.categories.is_empty() || c.categories.iter().any(|k| k == category))
                    && !tried.contains(id)
            })
            .min_by_key(|(id, c)| (c.idle_since, (*id).clone()))
            .map(|(id, _)| id.clone())
    }

    /// Frees an operator of `transfer`; `finished_call` restarts their idle
    /// time (they were on the call), a ring that stopped does not.
    pub fn free(&mut self, operator: &str, transfer: &str, finished_call: bool) {
        if let Some(c) = self.consoles.get_mut(operator)
            && c.busy.as_deref() == Some(transfer)
        {
            c.busy = None;
            if finished_call {
                c.idle_since = Instant::now();
            }
        }
    }

    /// Sends an event to an operator's console, if it is there.
    pub fn notify(&self, operator: &str, event: Event) {
        if let Some(c) = self.consoles.get(operator) {
            let _ =
                c.tx.send(Ok(OperatorSessionResponse { event: Some(event) }));
        }
    }
}
