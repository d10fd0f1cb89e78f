//! The device's counters: one serde struct, [`HmuMetrics`], the `registers` member of the
//! server's counter dump (`{"registers": ..., "transport": ...}`, also `harness inspect
//! --what counters` and a run's `result.json`). Its sections keep the dump's JSON names:
//! `chmu` (the CHMU register interface), `hotness` (the access feed and the hotlists),
//! `range`, and `cxl` (`component`, `memdev`, `mailbox`).
//!
//! Each part of the device owns its section and bumps it in place; the device assembles the
//! struct for a dump. Tests read a dump back into the struct and compare fields, or take
//! [`HmuMetrics::delta`] between two snapshots.

use crate::spec::dvsec::MemRange;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A counters section: a struct of `u64` counters with a doc line each, serde both ways, and
/// `delta(&self, earlier)`, the counts since `earlier` (saturating: a reset between the two
/// gives 0, never a wrap).
macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident,)* }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name { $($(#[$fm])* pub $f: u64,)* }

        impl $name {
            /// Counts since `earlier`.
            pub fn delta(&self, earlier: &Self) -> Self {
                Self { $($f: self.$f.saturating_sub(earlier.$f),)* }
            }
        }
    };
}

counters! {
    /// The CHMU register block (CXL 3.2 §8.2.8).
    pub struct ChmuMetrics {
        /// Host reads of the block, well formed or not.
        pub mmio_reads,
        /// Host writes to the block, well formed or not.
        pub mmio_writes,
        /// Accesses refused: bad width or alignment, or past the block.
        pub guest_errors,
        /// Disabled -> Enabled transitions.
        pub enables,
        /// Enabled -> Disabled transitions.
        pub disables,
        /// CFG0 writes with Reset Counters set.
        pub counter_resets,
        /// Enables refused for a configuration outside the capabilities.
        pub invalid_configs,
    }
}

counters! {
    /// Counting and reporting: what the access feed brought and what reached the hotlists.
    pub struct HotnessMetrics {
        /// Guest accesses the feed reported (sum of record weights), in range or not.
        pub accesses_seen,
        /// Of those, accesses inside the device's memory.
        pub accesses_in_range,
        /// Accesses counted after down-sampling, summed over instances.
        pub sampled,
        /// Epochs ended, summed over instances.
        pub epochs,
        /// Hotlist entries added.
        pub entries_written,
        /// Entries dropped on a full hotlist (and injected overflows).
        pub overflows,
        /// Hotlist Level Crossed events (fill threshold reached).
        pub fill_events,
        /// Clock value of the first record (to check the feed's clock).
        pub first_time,
        /// Clock value of the latest record.
        pub last_time,
        /// Clock value at which instance 0's current epoch ends (0 when not counting).
        pub epoch_end_0,
    }
}

counters! {
    /// Accesses to one CXL register block (component or memory device).
    pub struct BlockAccess {
        /// Host reads of the block.
        pub mmio_reads,
        /// Host writes to the block.
        pub mmio_writes,
        /// Bad width or alignment, or an offset past the block's registers.
        pub guest_errors,
    }
}

/// The memory device block: its accesses and the doorbells rung.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemdevMetrics {
    /// Mailbox doorbells rung (commands submitted).
    pub doorbells: u64,
    /// Accesses to the block.
    #[serde(flatten)]
    pub access: BlockAccess,
}

counters! {
    /// Mailbox command outcomes (CXL 3.2 §8.2.10).
    pub struct MailboxOutcomes {
        /// Commands submitted, whatever their outcome.
        pub commands,
        /// Commands that returned Success.
        pub succeeded,
        /// Commands that returned an error code.
        pub failed,
        /// Of the failed: Unsupported.
        pub unsupported,
        /// Of the failed: Invalid Payload Length.
        pub invalid_payload_length,
        /// Background commands started.
        pub background_started,
        /// Background commands completed.
        pub background_completed,
        /// Of the failed: Busy (a background command was running).
        pub busy,
    }
}

/// The mailbox: outcomes, and commands run by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxMetrics {
    /// Commands by outcome.
    #[serde(flatten)]
    pub outcomes: MailboxOutcomes,
    /// Commands found in the command table, by the spec's name.
    pub by_command: BTreeMap<Cow<'static, str>, u64>,
}

/// The component and memory device blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CxlMetrics {
    /// Accesses to the Component Registers.
    pub component: BlockAccess,
    /// Accesses to the Memory Device registers and doorbells.
    pub memdev: MemdevMetrics,
    /// Mailbox commands.
    pub mailbox: MailboxMetrics,
}

/// Every counter of the device: the `registers` member of the counter dump.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HmuMetrics {
    /// The CHMU register interface.
    pub chmu: ChmuMetrics,
    /// The access feed, counting and the hotlists.
    pub hotness: HotnessMetrics,
    /// The guest-physical range the device's memory occupies (context, not a counter).
    pub range: MemRange,
    /// The component and memory device blocks and the mailbox.
    pub cxl: CxlMetrics,
}

impl HmuMetrics {
    /// Counts since `earlier` (the range is this snapshot's; commands by name as differences,
    /// those that did not run since left out).
    pub fn delta(&self, earlier: &Self) -> Self {
        let by_command = self
            .cxl
            .mailbox
            .by_command
            .iter()
            .filter_map(|(k, v)| {
                let was = earlier.cxl.mailbox.by_command.get(k).copied().unwrap_or(0);
                (*v > was).then(|| (k.clone(), v - was))
            })
            .collect();
        Self {
            chmu: self.chmu.delta(&earlier.chmu),
            hotness: self.hotness.delta(&earlier.hotness),
            range: self.range,
            cxl: CxlMetrics {
                component: self.cxl.component.delta(&earlier.cxl.component),
                memdev: MemdevMetrics {
                    doorbells: self
                        .cxl
                        .memdev
                        .doorbells
                        .saturating_sub(earlier.cxl.memdev.doorbells),
                    access: self.cxl.memdev.access.delta(&earlier.cxl.memdev.access),
                },
                mailbox: MailboxMetrics {
                    outcomes: self
                        .cxl
                        .mailbox
                        .outcomes
                        .delta(&earlier.cxl.mailbox.outcomes),
                    by_command,
                },
            },
        }
    }
}

/// The device's counters from a server's counter dump (`{"registers": ..., "transport": ...}`,
/// what `--control`'s `counters` command and the exit dump print).
#[cfg(feature = "server")]
impl HmuMetrics {
    pub fn from_server_json(dump: &serde_json::Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(&dump["registers"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON names the harness, `harness inspect` and result.json readers use.
    #[test]
    fn the_dump_keeps_its_json_names() {
        let mut m = HmuMetrics::default();
        m.chmu.enables = 1;
        m.hotness.entries_written = 2;
        m.cxl.memdev.doorbells = 3;
        m.cxl.memdev.access.mmio_reads = 4;
        m.cxl.mailbox.outcomes.failed = 5;
        m.cxl
            .mailbox
            .by_command
            .insert("Identify Memory Device".into(), 6);
        let j = serde_json::to_value(&m).expect("serializes");
        assert_eq!(j["chmu"]["enables"], 1);
        assert_eq!(j["hotness"]["entries_written"], 2);
        assert_eq!(j["hotness"]["last_time"], 0);
        assert_eq!(j["cxl"]["memdev"]["doorbells"], 3);
        assert_eq!(j["cxl"]["memdev"]["mmio_reads"], 4);
        assert_eq!(j["cxl"]["mailbox"]["failed"], 5);
        assert_eq!(
            j["cxl"]["mailbox"]["by_command"]["Identify Memory Device"],
            6
        );
        assert_eq!(j["range"]["hpa_base"], 0);
        let back: HmuMetrics = serde_json::from_value(j).expect("reads back");
        assert_eq!(back, m);
    }

    #[test]
    fn deltas_subtract_every_counter_and_saturate() {
        let mut a = HmuMetrics::default();
        a.chmu.mmio_reads = 5;
        a.cxl.mailbox.by_command.insert("Get Log".into(), 2);
        let mut b = a.clone();
        b.chmu.mmio_reads = 7;
        b.hotness.epochs = 3;
        b.cxl.mailbox.by_command.insert("Get Log".into(), 3);
        b.cxl.mailbox.by_command.insert("Set LSA".into(), 1);
        let d = b.delta(&a);
        assert_eq!((d.chmu.mmio_reads, d.hotness.epochs), (2, 3));
        assert_eq!(d.cxl.mailbox.by_command.len(), 2);
        assert_eq!(d.cxl.mailbox.by_command.get("Get Log"), Some(&1));
        assert_eq!(a.delta(&b).chmu.mmio_reads, 0, "saturates");
    }
}
