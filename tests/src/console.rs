//! An operator's console, as the tests play it: a real `OperatorSession`
//! stream to a city node, and what it heard.

use std::time::Duration;

use hotline_proto::pb::city_hotline_client::CityHotlineClient;
use hotline_proto::pb::operator_session_request::Message;
use hotline_proto::pb::operator_session_response::Event;
use hotline_proto::pb::{
    CallContext, Citizen, OperatorSessionRequest, StartTransferRequest, Transfer, TransferMode,
    TransferState,
};
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

/// How long a console waits for something it expects to hear.
const HEAR_WITHIN: Duration = Duration::from_secs(15);

pub struct Console {
    pub operator: String,
    tx: Option<mpsc::UnboundedSender<OperatorSessionRequest>>,
    inbound: Streaming<hotline_proto::pb::OperatorSessionResponse>,
    /// Every transfer the console heard of, in order (rings and updates).
    pub heard: Vec<Transfer>,
}

impl Console {
    /// Opens a session for `operator`, taking `categories` (empty: all),
    /// available, and waits until the node has registered it.
    pub async fn open(
        client: &mut CityHotlineClient<Channel>,
        operator: &str,
        categories: &[&str],
    ) -> Self {
        let categories = categories.iter().map(|c| c.to_string()).collect();
        // The first message must be the registration of this operator.
        let (tx, inbound) = tokio::time::timeout(
            HEAR_WITHIN,
            simulator::calls::session(client, operator, categories, true),
        )
        .await
        .expect("registration in time")
        .expect("the first message is the registration");
        Self {
            operator: operator.into(),
            tx: Some(tx),
            inbound,
            heard: Vec::new(),
        }
    }

    pub fn set_available(&self, available: bool) {
        if let Some(tx) = &self.tx {
            tx.send(OperatorSessionRequest {
                message: Some(Message::Available(available)),
            })
            .unwrap();
        }
    }

    /// Ends the session, as a console that is closed.
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// The next event, or `None` when nothing came within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Event> {
        let msg = tokio::time::timeout(within, self.inbound.message())
            .await
            .ok()?
            .ok()??;
        let event = msg.event?;
        if let Event::Ringing(t) | Event::Update(t) = &event {
            self.heard.push(t.clone());
        }
        Some(event)
    }

    /// Waits until a transfer rings here.
    pub async fn ringing(&mut self) -> Transfer {
        loop {
            match self.next(HEAR_WITHIN).await {
                Some(Event::Ringing(t)) => return t,
                Some(_) => {}
                None => panic!(
                    "{}: nothing rang (heard {:?})",
                    self.operator,
                    self.states()
                ),
            }
        }
    }

    /// Waits until this console hears that transfer `id` is in `state`.
    pub async fn hears(&mut self, id: &str, state: TransferState) -> Transfer {
        if let Some(t) = self
            .heard
            .iter()
            .find(|t| t.id == id && t.state == state as i32)
        {
            return t.clone();
        }
        loop {
            match self.next(HEAR_WITHIN).await {
                Some(Event::Ringing(t) | Event::Update(t))
                    if t.id == id && t.state == state as i32 =>
                {
                    return t;
                }
                Some(_) => {}
                None => panic!(
                    "{}: never heard {id} {state:?} (heard {:?})",
                    self.operator,
                    self.states()
                ),
            }
        }
    }

    /// Whether anything rings here within `within`.
    pub async fn rings_within(&mut self, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Event::Ringing(_)) => return true,
                Some(_) => {}
                None => return false,
            }
        }
    }

    /// The states heard so far, for messages.
    pub fn states(&self) -> Vec<(String, String)> {
        self.heard
            .iter()
            .map(|t| {
                (
                    t.id.clone(),
                    TransferState::try_from(t.state)
                        .map(|s| s.as_str_name().to_owned())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// A transfer request with a context that carries a caller's personal data.
pub fn transfer_request(
    operator: &str,
    target: &str,
    category: &str,
    mode: TransferMode,
) -> StartTransferRequest {
    StartTransferRequest {
        operator_id: operator.into(),
        target_city: target.into(),
        category: category.into(),
        mode: mode as i32,
        context: Some(CallContext {
            caller_ref: "call-0001".into(),
            summary: "公积金异地转移咨询".into(),
            caller: Some(Citizen {
                name: "李四".into(),
                phone: "13800001111".into(),
            }),
        }),
    }
}

/// Starts a transfer, waiting while the node has no link to the gateway yet
/// (UNAVAILABLE right after start).
pub async fn start_transfer(
    client: &mut CityHotlineClient<Channel>,
    req: StartTransferRequest,
) -> Transfer {
    let until = tokio::time::Instant::now() + HEAR_WITHIN;
    loop {
        match client.start_transfer(req.clone()).await {
            Ok(r) => return r.into_inner().transfer.unwrap(),
            Err(e) if e.code() == tonic::Code::Unavailable => {
                assert!(
                    tokio::time::Instant::now() < until,
                    "node never linked: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("start transfer: {e}"),
        }
    }
}

/// The operator's actions on a transfer, as their console sends them.
pub async fn answer(
    client: &mut CityHotlineClient<Channel>,
    operator: &str,
    transfer: &str,
) -> Result<Transfer, tonic::Status> {
    client
        .answer_transfer(hotline_proto::pb::AnswerTransferRequest {
            operator_id: operator.into(),
            transfer_id: transfer.into(),
        })
        .await
        .map(|r| r.into_inner().transfer.unwrap_or_default())
}

pub async fn decline(
    client: &mut CityHotlineClient<Channel>,
    operator: &str,
    transfer: &str,
) -> Result<Transfer, tonic::Status> {
    client
        .decline_transfer(hotline_proto::pb::DeclineTransferRequest {
            operator_id: operator.into(),
            transfer_id: transfer.into(),
        })
        .await
        .map(|r| r.into_inner().transfer.unwrap_or_default())
}

pub async fn cancel(
    client: &mut CityHotlineClient<Channel>,
    operator: &str,
    transfer: &str,
) -> Result<Transfer, tonic::Status> {
    client
        .cancel_transfer(hotline_proto::pb::CancelTransferRequest {
            operator_id: operator.into(),
            transfer_id: transfer.into(),
        })
        .await
        .map(|r| r.into_inner().transfer.unwrap_or_default())
}

pub async fn complete(
    client: &mut CityHotlineClient<Channel>,
    operator: &str,
    transfer: &str,
) -> Result<Transfer, tonic::Status> {
    client
        .complete_transfer(hotline_proto::pb::CompleteTransferRequest {
            operator_id: operator.into(),
            transfer_id: transfer.into(),
        })
        .await
        .map(|r| r.into_inner().transfer.unwrap_or_default())
}
