//! Simulated calls that transfer (一键互转, 三方通话): at each city a front
//! desk whose operator transfers calls about other cities' matters, and a
//! team of operators at consoles who answer, decline or miss the calls
//! rung at them. The desk hands over warm and three-way calls once the other
//! side has answered, and turns a transfer that failed into a ticket (工单互派
//! behind 一键互转), which joins the tickets the report accounts for.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotline_proto::pb::city_hotline_client::CityHotlineClient;
use hotline_proto::pb::operator_session_request::Message;
use hotline_proto::pb::operator_session_response::Event;
use hotline_proto::pb::{
    AnswerTransferRequest, CallContext, CancelTransferRequest, Citizen, CompleteTransferRequest,
    ConvertTransferToTicketRequest, DeclineTransferRequest, OperatorHello, OperatorSessionRequest,
    OperatorSessionResponse, StartTransferRequest, Transfer, TransferMode, TransferState,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

use crate::plan::PlannedTransfer;
use crate::report::Created;

/// How the simulated operators behave with transfers, per mille.
#[derive(Debug, Clone, Copy)]
pub struct CallBehaviour {
    /// Transfers started per second at each city's desk.
    pub rate: f64,
    /// Operators at consoles in each city.
    pub operators: usize,
    /// Rung operators who answer; of the rest, `decline` decline and the
    /// others let it ring out.
    pub answer: u32,
    pub decline: u32,
    /// Transfers the desk cancels before an answer.
    pub cancel: u32,
}

impl Default for CallBehaviour {
    fn default() -> Self {
        Self {
            rate: 1.0,
            operators: 3,
            answer: 850,
            decline: 60,
            cancel: 20,
        }
    }
}

/// A transfer a desk started, as its node acknowledged it.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    /// When it must be terminal by (Unix ms), as the origin set it.
    pub deadline_ms: i64,
    pub origin: String,
    pub target: String,
    pub category: String,
}

/// What the desks started and converted.
#[derive(Debug, Default)]
pub struct CallLog {
    pub started: Mutex<Vec<Started>>,
    /// `ConvertTransferToTicket` calls the desks made, retries included:
    /// a desk converts each failed transfer once, so these stay close to
    /// the conversions.
    pub conversion_calls: std::sync::atomic::AtomicU64,
    /// Conversions the desk gave up on for now (refused, or still failing
    /// after its retries): said, not silent; a later update of the
    /// transfer tries again.
    pub conversions_not_made: std::sync::atomic::AtomicU64,
    /// The transfers being converted or converted, by id, for every desk
    /// and every session of it: the node sends a failed transfer's update
    /// again (after each conversion, on reconnecting), and the desk
    /// converts it once; a conversion that fails takes its id out, so that
    /// a later update tries again.
    converting: Mutex<HashSet<String>>,
}

impl CallLog {
    pub fn snapshot(&self) -> Vec<Started> {
        self.started.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

type Outbound = mpsc::UnboundedSender<OperatorSessionRequest>;

/// Opens a console session and waits until the node has registered this
/// operator; the sender keeps it open.
pub async fn session(
    client: &mut CityHotlineClient<Channel>,
    operator: &str,
    categories: Vec<String>,
    available: bool,
) -> anyhow::Result<(Outbound, tonic::Streaming<OperatorSessionResponse>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(OperatorSessionRequest {
        message: Some(Message::Hello(OperatorHello {
            operator_id: operator.to_owned(),
            categories,
            available,
        })),
    })?;
    let mut inbound = client
        .operator_session(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(OperatorSessionResponse {
            event: Some(Event::Registered(hello)),
        }) if hello.operator_id == operator => Ok((tx, inbound)),
        other => anyhow::bail!("{operator}: unexpected first message {other:?}"),
    }
}

/// One operator at a console of `city`, until `stop`: answers, declines or
/// misses what rings, after a human moment.
pub async fn console_operator(
    mut client: CityHotlineClient<Channel>,
    operator: String,
    categories: Vec<String>,
    seed: u64,
    behaviour: CallBehaviour,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !*stop.borrow() {
        let Some((_keep, mut inbound)) = session(&mut client, &operator, categories.clone(), true)
            .await
            .ok()
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                _ = stop.changed() => return,
            };
            let Ok(Some(msg)) = msg else { break };
            let Some(Event::Ringing(t)) = msg.event else {
                continue;
            };
            let roll = rng.random_range(0..1000);
            let pause = Duration::from_millis(rng.random_range(50..600));
            tokio::time::sleep(pause).await;
            if roll < behaviour.answer {
                let _ = client
                    .answer_transfer(AnswerTransferRequest {
                        operator_id: operator.clone(),
                        transfer_id: t.id,
                    })
                    .await;
            } else if roll < behaviour.answer + behaviour.decline {
                let _ = client
                    .decline_transfer(DeclineTransferRequest {
                        operator_id: operator.clone(),
                        transfer_id: t.id,
                    })
                    .await;
            }
            // Otherwise it rings out and the node tries the next operator.
        }
    }
}

/// The operators `consoles` starts at `city`: `{city}-op-{k}`.
pub fn operator_ids(city: &str, behaviour: &CallBehaviour) -> Vec<String> {
    (0..behaviour.operators)
        .map(|k| format!("{city}-op-{k}"))
        .collect()
}

/// The operator id of `city`'s front desk.
pub fn desk_id(city: &str) -> String {
    format!("desk-{city}")
}

/// `city`'s operators at consoles, taking calls transferred to it, until
/// `stop`: each takes a few categories, and the first takes them all. Each
/// console connects with `client_for(operator)`.
pub fn consoles(
    people: &mut tokio::task::JoinSet<()>,
    client_for: &dyn Fn(&str) -> anyhow::Result<CityHotlineClient<Channel>>,
    city: &str,
    categories: &[String],
    seed: u64,
    behaviour: CallBehaviour,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for (k, operator) in operator_ids(city, &behaviour).into_iter().enumerate() {
        let takes = if k == 0 {
            Vec::new()
        } else {
            categories.iter().skip(k).step_by(2).cloned().collect()
        };
        people.spawn(console_operator(
            client_for(&operator)?,
            operator,
            takes,
            seed.wrapping_add(k as u64),
            behaviour,
            stop.clone(),
        ));
    }
    Ok(())
}

/// The front desk of `city`, until `stop`: transfers calls about other
/// cities' matters at `behaviour.rate` per second, hands over answered warm
/// and three-way calls, converts failed transfers to tickets.
#[allow(clippy::too_many_arguments)]
pub async fn desk(
    mut client: CityHotlineClient<Channel>,
    city: String,
    cities: Vec<String>,
    categories: Vec<String>,
    seed: u64,
    behaviour: CallBehaviour,
    log: Arc<CallLog>,
    created: Arc<Mutex<Vec<Created>>>,
    mut stop: watch::Receiver<bool>,
) {
    let operator = desk_id(&city);
    let others: Vec<String> = cities.into_iter().filter(|c| *c != city).collect();
    // The desk starts transfers and takes none: unavailable, so that no
    // call transferred to this city rings at it.
    let Ok((_keep, inbound)) = session(&mut client, &operator, Vec::new(), false).await else {
        tracing::warn!(city, "the desk could not open its console");
        return;
    };
    let listener = tokio::spawn(follow(
        client.clone(),
        operator.clone(),
        inbound,
        created,
        log.clone(),
        stop.clone(),
    ));
    let mut rng = StdRng::seed_from_u64(seed);
    let period = Duration::from_secs_f64(1.0 / behaviour.rate.max(0.01));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let target = others[rng.random_range(0..others.len())].clone();
        let category = categories[rng.random_range(0..categories.len())].clone();
        let mode = match rng.random_range(0..100) {
            0..40 => TransferMode::Blind,
            40..75 => TransferMode::Warm,
            _ => TransferMode::Conference,
        };
        let cancel = rng.random_range(0..1000) < behaviour.cancel;
        let planned = PlannedTransfer {
            context: CallContext {
                caller_ref: format!("{city}-call-{}", rng.random_range(0..1_000_000u32)),
                summary: format!("来电咨询{category}相关事项，需{target}办理"),
                caller: Some(Citizen {
                    name: "市民".into(),
                    phone: format!("1390000{:04}", rng.random_range(0..10_000u32)),
                }),
            },
            target,
            category,
            mode,
            cancel,
        };
        start_one(&client, &operator, &city, planned, &log).await;
    }
    let _ = listener.await;
}

/// Starts one transfer from `operator`'s console and records it; cancels
/// it a moment later when planned so. False when the node refused it
/// (not linked to the gateway, or down): the call stays with the operator
/// and nothing was started.
async fn start_one(
    client: &CityHotlineClient<Channel>,
    operator: &str,
    city: &str,
    planned: PlannedTransfer,
    log: &CallLog,
) -> bool {
    let req = StartTransferRequest {
        operator_id: operator.to_owned(),
        target_city: planned.target.clone(),
        category: planned.category.clone(),
        mode: planned.mode as i32,
        context: Some(planned.context),
    };
    let Ok(response) = client.clone().start_transfer(req).await else {
        return false;
    };
    let Some(t) = response.into_inner().transfer else {
        return false;
    };
    if let Ok(mut s) = log.started.lock() {
        s.push(Started {
            id: t.id.clone(),
            deadline_ms: t
                .deadline
                .as_ref()
                .map(hotline_proto::time::to_unix_ms)
                .unwrap_or(i64::MAX),
            origin: city.to_owned(),
            target: planned.target,
            category: planned.category,
        });
    }
    if planned.cancel {
        let mut client = client.clone();
        let operator = operator.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Refused when it was answered meanwhile: fine.
            let _ = client
                .cancel_transfer(CancelTransferRequest {
                    operator_id: operator,
                    transfer_id: t.id,
                })
                .await;
        });
    }
    true
}

/// The front desk of `city` playing a scenario's planned transfers as they
/// come from `planned`, until it closes: like [`desk`], and it opens its
/// console again whenever the node drops it (a node killed and restarted).
/// Returns how many planned transfers the node refused to start. Counts
/// each planned transfer off `pending` once it is started or refused.
pub async fn planned_desk(
    client: CityHotlineClient<Channel>,
    city: String,
    mut planned: mpsc::UnboundedReceiver<PlannedTransfer>,
    pending: Arc<std::sync::atomic::AtomicU64>,
    log: Arc<CallLog>,
    created: Arc<Mutex<Vec<Created>>>,
    stop: watch::Receiver<bool>,
) -> u64 {
    let operator = desk_id(&city);
    let mut refused = 0;
    let mut followers = tokio::task::JoinSet::new();
    // Up to 16 starts at once: a desk keeps up with a scenario's peak.
    let mut starting = tokio::task::JoinSet::new();
    'session: loop {
        let mut c = client.clone();
        let inbound = loop {
            match session(&mut c, &operator, Vec::new(), false).await {
                Ok((keep, inbound)) => break (keep, inbound),
                Err(_) => {
                    // Down: calls that arrive meanwhile cannot be transferred.
                    while let Ok(_missed) = planned.try_recv() {
                        refused += 1;
                        pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if planned.is_closed() && planned.is_empty() {
                        break 'session;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let (_keep, inbound) = inbound;
        followers.spawn(follow(
            client.clone(),
            operator.clone(),
            inbound,
            created.clone(),
            log.clone(),
            stop.clone(),
        ));
        loop {
            tokio::select! {
                next = planned.recv() => {
                    let Some(next) = next else { break 'session };
                    while starting.len() >= 16 {
                        if let Some(Ok(false)) = starting.join_next().await {
                            refused += 1;
                        }
                    }
                    let (client, operator, city, log, pending) =
                        (client.clone(), operator.clone(), city.clone(), log.clone(), pending.clone());
                    starting.spawn(async move {
                        let started = start_one(&client, &operator, &city, next, &log).await;
                        pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        started
                    });
                }
                // The console's stream ended: the node went away.
                _ = followers.join_next() => continue 'session,
            }
        }
    }
    while let Some(started) = starting.join_next().await {
        if let Ok(false) = started {
            refused += 1;
        }
    }
    while followers.join_next().await.is_some() {}
    refused
}

/// The desk's console: what happens to its transfers. On `stop` it waits
/// for the conversions under way, so every ticket it made is recorded
/// before the demo counts.
async fn follow(
    client: CityHotlineClient<Channel>,
    operator: String,
    mut inbound: tonic::Streaming<OperatorSessionResponse>,
    created: Arc<Mutex<Vec<Created>>>,
    log: Arc<CallLog>,
    mut stop: watch::Receiver<bool>,
) {
    let mut work = tokio::task::JoinSet::new();
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = stop.changed() => break,
        };
        let Ok(Some(msg)) = msg else { break };
        let Some(Event::Update(t)) = msg.event else {
            continue;
        };
        match TransferState::try_from(t.state) {
            Ok(TransferState::Answered | TransferState::Conferenced) => {
                work.spawn(hand_over(client.clone(), operator.clone(), t));
            }
            Ok(TransferState::Failed | TransferState::Declined | TransferState::TimedOut) => {
                let first = log
                    .converting
                    .lock()
                    .map(|mut c| c.insert(t.id.clone()))
                    .unwrap_or(true);
                if first {
                    work.spawn(convert(
                        client.clone(),
                        operator.clone(),
                        t,
                        created.clone(),
                        log.clone(),
                    ));
                }
            }
            _ => {}
        }
        while work.try_join_next().is_some() {}
    }
    while work.join_next().await.is_some() {}
}

/// The origin operator stays a moment on a warm or three-way call, then
/// drops out.
async fn hand_over(mut client: CityHotlineClient<Channel>, operator: String, t: Transfer) {
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = client
        .complete_transfer(CompleteTransferRequest {
            operator_id: operator,
            transfer_id: t.id,
        })
        .await;
}

/// Nobody took the call: it becomes a ticket for the target city.
async fn convert(
    mut client: CityHotlineClient<Channel>,
    operator: String,
    t: Transfer,
    created: Arc<Mutex<Vec<Created>>>,
    log: Arc<CallLog>,
) {
    let req = ConvertTransferToTicketRequest {
        operator_id: operator,
        transfer_id: t.id.clone(),
        note: "转接未成功，转为工单".into(),
    };
    // Not converted: counted, and a later update of the transfer tries
    // again.
    let not_converted = |why: &str| {
        log.conversions_not_made
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(transfer = %t.id, why, "the desk could not convert a failed transfer");
        if let Ok(mut c) = log.converting.lock() {
            c.remove(&t.id);
        }
    };
    for _ in 0..20 {
        log.conversion_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match client.convert_transfer_to_ticket(req.clone()).await {
            Ok(r) => {
                if let Some(ticket) = r.into_inner().ticket
                    && let Ok(mut c) = created.lock()
                {
                    // Idempotent: a retry that got through returns the same
                    // ticket, which is recorded once.
                    if !c.iter().any(|x| x.id == ticket.id) {
                        c.push(Created {
                            id: ticket.id,
                            origin: ticket.origin_city,
                            targets: ticket.target_cities,
                            category: ticket.category,
                        });
                    }
                }
                return;
            }
            Err(e) if hotline_proto::grpc::is_transient(e.code()) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                not_converted(e.message());
                return;
            }
        }
    }
    not_converted("still unavailable after 20 tries");
}
