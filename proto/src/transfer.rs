//! The call-transfer state machine: which state may follow which, and who
//! may make each move. The gateway orders every transfer's moves with it;
//! the nodes check the moves they make and receive with it.
//!
//! ```text
//! INITIATED ─▶ OFFERED ─▶ RINGING ─▶ ANSWERED ─▶ CONFERENCED ─▶ COMPLETED
//!     │           │        │  ▲ │        └───────────────────────▶ COMPLETED
//!     │           │        └──┘ │ (next operator)
//!     └───────────┴─────────────┴─▶ DECLINED | TIMED_OUT | CANCELLED | FAILED
//! ```
//! FAILED may end any live transfer (a node, console or the gateway lost);
//! CANCELLED only one not yet answered.

use crate::pb::{TransferMode, TransferState};

/// Who makes a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    /// The origin city's node, for its operator.
    Origin,
    /// The target city's node: routing, ringing, answering.
    Target,
    /// The gateway: offering, deadlines, losses.
    Gateway,
}

pub fn is_terminal(s: TransferState) -> bool {
    use TransferState as S;
    matches!(
        s,
        S::Completed | S::Declined | S::TimedOut | S::Cancelled | S::Failed
    )
}

/// Whether `to` may directly follow `from`, by anyone.
pub fn can_move(from: TransferState, to: TransferState) -> bool {
    use TransferState as S;
    if is_terminal(from) || from == S::Unspecified {
        return false;
    }
    match to {
        S::Failed => true,
        S::Offered => from == S::Initiated,
        S::Ringing => matches!(from, S::Offered | S::Ringing),
        S::Answered => from == S::Ringing,
        S::Conferenced => from == S::Answered,
        S::Completed => matches!(from, S::Answered | S::Conferenced),
        S::Declined => from == S::Ringing,
        S::TimedOut | S::Cancelled => matches!(from, S::Initiated | S::Offered | S::Ringing),
        S::Initiated | S::Unspecified => false,
    }
}

/// Whether `party` may make the move from `from` to `to`.
pub fn may_move(party: Party, from: TransferState, to: TransferState) -> bool {
    use TransferState as S;
    if !can_move(from, to) {
        return false;
    }
    match party {
        Party::Gateway => matches!(to, S::Offered | S::TimedOut | S::Failed | S::Completed),
        Party::Origin => matches!(to, S::Cancelled | S::Completed | S::Failed),
        Party::Target => matches!(
            to,
            S::Ringing
                | S::Answered
                | S::Conferenced
                | S::Completed
                | S::Declined
                | S::TimedOut
                | S::Failed
        ),
    }
}

/// The state a transfer is in once its target operator answered: a blind
/// transfer is done, a three-way call is bridged, a warm one waits for the
/// origin operator to hand over.
pub fn after_answer(mode: TransferMode) -> TransferState {
    match mode {
        TransferMode::Blind => TransferState::Completed,
        TransferMode::Conference => TransferState::Conferenced,
        TransferMode::Warm | TransferMode::Unspecified => TransferState::Answered,
    }
}

/// The key of a state in statistics ("COMPLETED", ...).
pub fn state_key(s: TransferState) -> &'static str {
    s.as_str_name()
        .strip_prefix("TRANSFER_STATE_")
        .unwrap_or("UNSPECIFIED")
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransferState as S;
    use proptest::prelude::*;

    const ALL: [S; 11] = [
        S::Unspecified,
        S::Initiated,
        S::Offered,
        S::Ringing,
        S::Answered,
        S::Conferenced,
        S::Completed,
        S::Declined,
        S::TimedOut,
        S::Cancelled,
        S::Failed,
    ];

    #[test]
    fn each_mode_has_a_path_to_completed() {
        for path in [
            &[
                S::Initiated,
                S::Offered,
                S::Ringing,
                S::Answered,
                S::Completed,
            ][..],
            &[
                S::Initiated,
                S::Offered,
                S::Ringing,
                S::Ringing,
                S::Answered,
                S::Conferenced,
                S::Completed,
            ],
        ] {
            for w in path.windows(2) {
                assert!(can_move(w[0], w[1]), "{:?} -> {:?}", w[0], w[1]);
            }
        }
        assert_eq!(after_answer(TransferMode::Blind), S::Completed);
        assert_eq!(after_answer(TransferMode::Conference), S::Conferenced);
    }

    #[test]
    fn answered_calls_cannot_be_cancelled_and_the_origin_cannot_answer() {
        assert!(!can_move(S::Answered, S::Cancelled));
        assert!(!can_move(S::Conferenced, S::Cancelled));
        assert!(!may_move(Party::Origin, S::Ringing, S::Answered));
        assert!(!may_move(Party::Target, S::Ringing, S::Cancelled));
        assert!(may_move(Party::Origin, S::Ringing, S::Cancelled));
        assert!(!can_move(S::Initiated, S::Completed));
    }

    proptest! {
        /// Random moves against a model: nothing leaves a terminal state,
        /// COMPLETED is reached only through an answer, CANCELLED only
        /// before one, and every live state can still end by FAILED.
        #[test]
        fn random_moves_keep_the_rules(moves in proptest::collection::vec((0usize..11, 0usize..3), 0..64)) {
            let mut s = S::Initiated;
            let mut answered = false;
            for (to, party) in moves {
                let to = ALL[to];
                let party = [Party::Origin, Party::Target, Party::Gateway][party];
                if !is_terminal(s) {
                    prop_assert!(can_move(s, S::Failed));
                }
                if may_move(party, s, to) {
                    prop_assert!(!is_terminal(s));
                    if to == S::Completed { prop_assert!(answered); }
                    if to == S::Cancelled { prop_assert!(!answered); }
                    if to == S::Answered { answered = true; }
                    s = to;
                } else if is_terminal(s) {
                    prop_assert!(!can_move(s, to));
                }
            }
        }
    }
}
