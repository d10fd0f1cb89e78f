//! The state machine of one CHMU instance as a transition table (CXL 3.2 §8.2.8.3 CFG0
//! Enable and Reset Counters, §8.2.8.4 Status). No I/O: the block runs a row and mirrors the
//! result into STATUS through one setter.
//!
//! The state is STATUS.Enabled. The latched status bits, Hotlist Overflow and Hotlist Level
//! Crossed, are effects of rows: the device sets them, the host clears them by writing 1, and
//! the interrupt fires when one goes from clear to set with its CFG0 interrupt enable set.
//! STATUS.Operation in Progress stays 0: every operation completes before the write returns,
//! so a driver polling it sees it done at once.
//!
//! Left out: operations that take time (Enabling, Disabling and Resetting Counters in
//! Operation in Progress are never shown).

/// STATUS.Enabled of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum State {
    Disabled,
    Enabled,
}

impl State {
    pub fn from_enabled(enabled: bool) -> Self {
        if enabled {
            State::Enabled
        } else {
            State::Disabled
        }
    }
}

/// What happens to an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// CFG0 written with Enable set, while disabled with a configuration the capabilities
    /// allow, or while enabled (a rewrite).
    Enable,
    /// CFG0 written with Enable set while disabled, with a configuration outside the
    /// capabilities (see `Refusal`).
    EnableRefused,
    /// CFG0 written with Enable clear.
    Disable,
    /// CFG0 written with Reset Counters set.
    ResetCounters,
    /// The device had an entry to add and the hotlist was full.
    HotlistFull,
    /// The hotlist's fill reached CFG2's notification threshold.
    FillReached,
    /// Function reset: every register back to its reset value.
    Reset,
}

/// A latched STATUS bit a row sets (RW1C to the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latch {
    /// STATUS\[40\] Hotlist Overflow; interrupts with CFG0\[9\].
    Overflow,
    /// STATUS\[41\] Hotlist Level Crossed; interrupts with CFG0\[10\].
    FillReached,
}

/// Register-interface counter a row bumps (`metrics::ChmuMetrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    Enables,
    Disables,
    CounterResets,
    InvalidConfigs,
}

/// What a row does besides changing the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effects {
    /// Counting restarts: counts, the epoch grid and the down-sampling phase are dropped.
    pub restart: bool,
    /// CFG0.Enable does not stick (reads back 0).
    pub drop_enable: bool,
    pub latch: Option<Latch>,
    pub count: Option<Count>,
}

const NONE: Effects = Effects {
    restart: false,
    drop_enable: false,
    latch: None,
    count: None,
};
const RESTART: Effects = Effects {
    restart: true,
    ..NONE
};

const fn counted(e: Effects, c: Count) -> Effects {
    Effects {
        count: Some(c),
        ..e
    }
}

const fn latch(l: Latch) -> Effects {
    Effects {
        latch: Some(l),
        ..NONE
    }
}

/// One row: in `from`, on `event`, go to `to` with `effects`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub event: Event,
    pub to: State,
    pub effects: Effects,
}

const fn t(from: State, event: Event, to: State, effects: Effects) -> Transition {
    Transition {
        from,
        event,
        to,
        effects,
    }
}

use Event::*;
use State::*;

/// Every (state, event) pair, exactly once. Any CFG0 write restarts counting (the host
/// reconfigured the instance); a refused enable leaves the instance disabled and the enable
/// bit clear, as §8.2.8.4 offers no error field.
#[rustfmt::skip]
pub const TRANSITIONS: &[Transition] = &[
    t(Disabled, Enable,        Enabled,  counted(RESTART, Count::Enables)),
    t(Disabled, EnableRefused, Disabled, counted(Effects { drop_enable: true, ..RESTART }, Count::InvalidConfigs)),
    t(Disabled, Disable,       Disabled, RESTART),
    t(Disabled, ResetCounters, Disabled, counted(RESTART, Count::CounterResets)),
    // Only fault injection overflows a disabled instance (it adds no entries).
    t(Disabled, HotlistFull,   Disabled, latch(Latch::Overflow)),
    t(Disabled, FillReached,   Disabled, NONE),
    t(Disabled, Reset,         Disabled, RESTART),
    t(Enabled,  Enable,        Enabled,  RESTART),
    // Not produced (the capabilities are checked on the way in only); kept for totality.
    t(Enabled,  EnableRefused, Enabled,  RESTART),
    t(Enabled,  Disable,       Disabled, counted(RESTART, Count::Disables)),
    t(Enabled,  ResetCounters, Enabled,  counted(RESTART, Count::CounterResets)),
    t(Enabled,  HotlistFull,   Enabled,  latch(Latch::Overflow)),
    t(Enabled,  FillReached,   Enabled,  latch(Latch::FillReached)),
    t(Enabled,  Reset,         Disabled, RESTART),
];

/// The row for `event` in `from` (the table is total, so always `Some`).
pub fn step(from: State, event: Event) -> Option<&'static Transition> {
    TRANSITIONS
        .iter()
        .find(|r| r.from == from && r.event == event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(from: State, e: Event) -> Transition {
        *step(from, e).expect("the table is total")
    }

    const EVENTS: [Event; 7] = [
        Enable,
        EnableRefused,
        Disable,
        ResetCounters,
        HotlistFull,
        FillReached,
        Reset,
    ];

    #[test]
    fn every_state_and_event_has_exactly_one_row() {
        for from in [Disabled, Enabled] {
            for e in EVENTS {
                let n = TRANSITIONS
                    .iter()
                    .filter(|r| r.from == from && r.event == e)
                    .count();
                assert_eq!(n, 1, "{from:?} {e:?}");
                assert_eq!(step(from, e).map(|r| r.event), Some(e));
            }
        }
        assert_eq!(TRANSITIONS.len(), 2 * EVENTS.len());
    }

    #[test]
    fn only_a_checked_enable_enables_and_only_disable_or_reset_disables() {
        for r in TRANSITIONS {
            if r.from == Disabled && r.to == Enabled {
                assert_eq!(r.event, Enable);
            }
            if r.from == Enabled && r.to == Disabled {
                assert!(matches!(r.event, Disable | Reset), "{r:?}");
            }
        }
        let refused = row(Disabled, EnableRefused);
        assert!(refused.effects.drop_enable);
        assert_eq!(refused.to, Disabled);
    }

    #[test]
    fn every_cfg0_write_restarts_counting_and_latches_do_not() {
        for from in [Disabled, Enabled] {
            for e in [Enable, EnableRefused, Disable, ResetCounters, Reset] {
                assert!(row(from, e).effects.restart, "{from:?} {e:?}");
            }
            for e in [HotlistFull, FillReached] {
                assert!(!row(from, e).effects.restart, "{from:?} {e:?}");
                assert_eq!(row(from, e).to, from);
            }
        }
        assert_eq!(
            row(Enabled, FillReached).effects.latch,
            Some(Latch::FillReached)
        );
        assert_eq!(row(Disabled, FillReached).effects.latch, None);
    }
}
