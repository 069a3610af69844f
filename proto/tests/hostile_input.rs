//! Hostile input: random bytes, and valid requests with bytes flipped, fed
//! to every request decoder and then to the contract's validators. Nothing
//! may panic; whatever decodes is either accepted or refused with
//! INVALID_ARGUMENT whose message starts with the field it names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hotline_proto::pb::*;
use hotline_proto::{Catalogue, ContractError, validate};
use proptest::prelude::*;
use prost::Message;

fn catalogue() -> Catalogue {
    Catalogue::default()
}

/// A refusal must be INVALID_ARGUMENT naming a field, in a message that
/// can be shown (bounded, even for huge input).
fn assert_clear(result: Result<(), ContractError>) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let status = tonic::Status::from(e);
        prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let message = status.message();
        prop_assert!(message.contains(':'), "no field in {:?}", message);
        prop_assert!(
            message.len() < 1024,
            "an unbounded message: {} bytes",
            message.len()
        );
    }
    Ok(())
}

/// Every request of the contract that carries data, decoded from `bytes`
/// and validated the way the servers validate it.
fn every_decoder(bytes: &[u8]) -> Result<(), TestCaseError> {
    let cat = catalogue();
    if let Ok(r) = CreateTicketRequest::decode(bytes) {
        let t = r.ticket.unwrap_or_default();
        assert_clear(validate::new_ticket(&t, "luzhou", &cat))?;
    }
    let dispatched = |t: &Ticket| {
        validate::dispatched_ticket(
            t,
            &cat,
            hotline_proto::time::now_ms(),
            validate::DEFAULT_MAX_AGE_DAYS,
        )
        .map(|_| ())
    };
    if let Ok(r) = DispatchTicketRequest::decode(bytes) {
        assert_clear(validate::city("city", &r.city, &cat))?;
        assert_clear(dispatched(&r.ticket.unwrap_or_default()))?;
    }
    if let Ok(r) = ReportEventRequest::decode(bytes) {
        let e = r.event.unwrap_or_default();
        assert_clear(validate::reported_event(&e).map(|_| ()))?;
    }
    if let Ok(r) = DeliverTicketRequest::decode(bytes) {
        assert_clear(dispatched(&r.ticket.unwrap_or_default()))?;
    }
    if let Ok(r) = DeliverEventRequest::decode(bytes) {
        let e = r.event.unwrap_or_default();
        assert_clear(validate::reported_event(&e).map(|_| ()))?;
    }
    for id in [
        AcceptTicketRequest::decode(bytes).map(|r| r.ticket_id),
        GetTicketRequest::decode(bytes).map(|r| r.ticket_id),
        AnswerTransferRequest::decode(bytes).map(|r| r.transfer_id),
        GetLedgerTicketRequest::decode(bytes).map(|r| r.ticket_id),
    ]
    .into_iter()
    .flatten()
    {
        assert_clear(validate::ticket_id("ticket_id", &id).map(|_| ()))?;
    }
    if let Ok(r) = CloseTicketRequest::decode(bytes) {
        assert_clear(validate::satisfaction("satisfaction", r.satisfaction))?;
        assert_clear(validate::text("note", &r.note, validate::MAX_NOTE, false))?;
    }
    if let Ok(r) = StartTransferRequest::decode(bytes) {
        assert_clear(validate::city("target_city", &r.target_city, &cat))?;
        assert_clear(validate::category("category", &r.category, &cat))?;
        let c = r.context.unwrap_or_default();
        assert_clear(validate::text(
            "context.summary",
            &c.summary,
            validate::MAX_DESCRIPTION,
            false,
        ))?;
    }
    // Signals and sessions are decoded by the streams' readers.
    let _ = TransferSignalsRequest::decode(bytes);
    let _ = OperatorSessionRequest::decode(bytes);
    let _ = Transfer::decode(bytes);
    Ok(())
}

/// A request that passes every check, to mutate.
fn valid_requests() -> Vec<Vec<u8>> {
    let id = hotline_proto::TicketId::new("luzhou").to_string();
    let ticket = Ticket {
        id: id.clone(),
        origin_city: "luzhou".into(),
        target_cities: vec!["yibin".into()],
        category: "housing-fund".into(),
        kind: TicketKind::Consultation as i32,
        channel: Channel::Phone as i32,
        priority: Priority::Normal as i32,
        subject: "公积金异地转移".into(),
        description: "在宜宾缴存的公积金如何转回泸州".into(),
        history: vec![hotline_proto::state::event(
            &id,
            1,
            EventKind::Created,
            "luzhou",
            TicketStatus::Pending,
        )],
        ..Default::default()
    };
    let cat = catalogue();
    assert!(
        validate::dispatched_ticket(
            &ticket,
            &cat,
            hotline_proto::time::now_ms(),
            validate::DEFAULT_MAX_AGE_DAYS
        )
        .is_ok()
    );
    vec![
        CreateTicketRequest {
            ticket: Some(Ticket {
                id: String::new(),
                origin_city: String::new(),
                history: Vec::new(),
                ..ticket.clone()
            }),
        }
        .encode_to_vec(),
        DispatchTicketRequest {
            city: "luzhou".into(),
            ticket: Some(ticket.clone()),
        }
        .encode_to_vec(),
        ReportEventRequest {
            city: "yibin".into(),
            event: Some(hotline_proto::state::event(
                &id,
                4,
                EventKind::Accepted,
                "yibin",
                TicketStatus::Accepted,
            )),
        }
        .encode_to_vec(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic_and_refusals_name_a_field(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        every_decoder(&bytes)?;
    }

    #[test]
    fn mutated_valid_requests_never_panic_and_refusals_name_a_field(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = valid_requests()[which].clone();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        every_decoder(&bytes)?;
    }
}

#[test]
fn oversized_text_is_refused_with_its_field() {
    let huge = "诉".repeat(100_000);
    let e = validate::text(
        "ticket.description",
        &huge,
        validate::MAX_DESCRIPTION,
        false,
    )
    .unwrap_err();
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("ticket.description:"));
    assert!(status.message().len() < 1024);
    // Unknown ids are named in the answer, cut short.
    let cat = catalogue();
    let long = "x".repeat(1_000_000);
    for e in [
        validate::city("ticket.target_cities[0]", &long, &cat).unwrap_err(),
        validate::category("ticket.category", &long, &cat).unwrap_err(),
        validate::ticket_id("ticket_id", &long)
            .map(|_| ())
            .unwrap_err(),
    ] {
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().len() < 1024,
            "{} bytes",
            status.message().len()
        );
    }
}
