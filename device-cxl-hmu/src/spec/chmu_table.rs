//! The CHMU register table (CXL 3.2 §8.2.8): every fixed register of the block as one row of
//! offset, name, width, reset value, writable mask, write-1-to-clear mask, write lock and
//! post-write hook, in spec order. The core builds the block from it at reset and runs each
//! write through it.
//!
//! - §8.2.8.1 CHMU Common Capability (block-relative 00h and 08h);
//! - §8.2.8.2 CHMU Capability 0-3, §8.2.8.3 Configuration 0-2, §8.2.8.4 Status, §8.2.8.5/6
//!   Hotlist Head/Tail (instance-relative, once per instance).
//!
//! Not rows: the Range Configuration Bitmap (§8.2.8.7) and the Hotlist (§8.2.8.8) are arrays
//! whose offsets CAP2 and CAP3 report and whose lengths the capabilities set
//! ([`crate::spec::layout::ChmuConfig`]); both reset to 0, the bitmap's bits covering the device's
//! memory are writable and the rest reserved, hotlist entries are read-only to the host.

use crate::spec::layout::ChmuConfig;
use crate::spec::regs::*;

/// Whether a register sits once in the block or once per instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Offset relative to the block (common capability, §8.2.8.1).
    Common,
    /// Offset relative to each instance's base (10h + CHMU Instance Length x i).
    Instance,
}

/// Where a register's reset value comes from: the capabilities this device advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    Zero,
    /// Version 1 and the number of instances.
    CommonCap0,
    /// CHMU Instance Length.
    CommonCap1,
    /// [`ChmuConfig::cap0`].
    Cap0,
    /// [`ChmuConfig::cap1`].
    Cap1,
    /// Range bitmap offset ([`CHMU_RANGE_BITMAP`]).
    Cap2,
    /// Hotlist offset of the instance ([`ChmuConfig::cap3`]).
    Cap3,
    /// Disabled, no operation in progress, the counter width.
    Status,
}

impl Reset {
    /// The reset value of instance `i`'s register (common registers ignore `i`).
    pub fn value(self, c: &ChmuConfig, i: u8) -> u64 {
        match self {
            Reset::Zero => 0,
            Reset::CommonCap0 => CommonCap0::new()
                .with_version(1)
                .with_num_instances(c.instances)
                .into(),
            Reset::CommonCap1 => CommonCap1::new()
                .with_instance_length(u16::try_from(c.instance_length()).unwrap_or(u16::MAX))
                .into(),
            Reset::Cap0 => c.cap0(),
            Reset::Cap1 => c.cap1(),
            Reset::Cap2 => CHMU_RANGE_BITMAP,
            Reset::Cap3 => c.cap3(i),
            Reset::Status => ChmuStatus::new().with_counter_width(c.counter_width).into(),
        }
    }
}

/// When the host may write a register's writable bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    Never,
    /// Ignored while the instance is enabled (§8.2.8.6 leaves a change then undefined).
    WhileEnabled,
}

/// What a host write to a register sets off, after the bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostWrite {
    None,
    /// Enable, disable or reset counters: the instance's state machine
    /// (`core::state`, §8.2.8.3 Enable and Reset Counters, §8.2.8.4 Operation in Progress).
    Cfg0,
}

/// One register of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChmuReg {
    pub scope: Scope,
    pub offset: u64,
    pub name: &'static str,
    /// Bytes (8, or 2 for HEAD and TAIL).
    pub width: u8,
    pub reset: Reset,
    /// Bits the host may write.
    pub wmask: u64,
    /// Bits the host clears by writing 1.
    pub w1c: u64,
    pub lock: Lock,
    pub post_write: PostWrite,
}

const fn ro(scope: Scope, offset: u64, name: &'static str, reset: Reset) -> ChmuReg {
    ChmuReg {
        scope,
        offset,
        name,
        width: 8,
        reset,
        wmask: 0,
        w1c: 0,
        lock: Lock::Never,
        post_write: PostWrite::None,
    }
}

const fn rw(offset: u64, name: &'static str, width: u8, wmask: u64) -> ChmuReg {
    ChmuReg {
        scope: Scope::Instance,
        offset,
        name,
        width,
        reset: Reset::Zero,
        wmask,
        w1c: 0,
        lock: Lock::Never,
        post_write: PostWrite::None,
    }
}

/// CFG0: request type \[7:0\], randomized down-sampling \[8\], overflow and fill-threshold
/// interrupt enables \[10:9\], Enable \[16\], Reset Counters \[17\], Hotness Threshold \[63:32\].
pub const CFG0_WMASK: u64 = 0xffff_ffff_0003_07ff;
/// CFG1: unit size \[31:0\], down-sampling factor \[35:32\], reporting mode \[47:40\], epoch
/// scale \[51:48\], epoch multiplier \[63:52\].
pub const CFG1_WMASK: u64 = 0xffff_ff0f_ffff_ffff;
/// CFG2: Hotlist Notification Threshold \[15:0\].
pub const CFG2_WMASK: u64 = 0xffff;
/// STATUS: Hotlist Overflow \[40\] and Hotlist Level Crossed \[41\] are RW1C.
pub const STATUS_W1C: u64 = 0x0300_0000_0000;

/// The register table, in offset order within each scope.
#[rustfmt::skip]
pub const REGISTERS: &[ChmuReg] = &[
    ro(Scope::Common, CHMU_COMMON_CAP0, "CHMU Common Capability 0", Reset::CommonCap0),
    ro(Scope::Common, CHMU_COMMON_CAP1, "CHMU Common Capability 1", Reset::CommonCap1),
    ro(Scope::Instance, CHMU_CAP0, "CHMU Capability 0", Reset::Cap0),
    ro(Scope::Instance, CHMU_CAP1, "CHMU Capability 1", Reset::Cap1),
    ro(Scope::Instance, CHMU_CAP2, "CHMU Capability 2", Reset::Cap2),
    ro(Scope::Instance, CHMU_CAP3, "CHMU Capability 3", Reset::Cap3),
    ChmuReg { post_write: PostWrite::Cfg0, ..rw(CHMU_CFG0, "CHMU Configuration 0", 8, CFG0_WMASK) },
    rw(CHMU_CFG1, "CHMU Configuration 1", 8, CFG1_WMASK),
    rw(CHMU_CFG2, "CHMU Configuration 2", 8, CFG2_WMASK),
    ChmuReg { w1c: STATUS_W1C, ..ro(Scope::Instance, CHMU_STATUS, "CHMU Status", Reset::Status) },
    rw(CHMU_HOTLIST_HEAD, "CHMU Hotlist Head", 2, 0xffff),
    ChmuReg { lock: Lock::WhileEnabled, ..rw(CHMU_HOTLIST_TAIL, "CHMU Hotlist Tail", 2, 0xffff) },
];

/// The instance register holding instance-relative byte `rel`, if any.
pub fn instance_reg_at(rel: u64) -> Option<&'static ChmuReg> {
    REGISTERS.iter().find(|r| {
        r.scope == Scope::Instance && (r.offset..r.offset + u64::from(r.width)).contains(&rel)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets unique, sorted and naturally aligned within each scope, rows inside their
    /// scope's room (common capability below the first instance, instance registers below
    /// the range bitmap).
    #[test]
    fn offsets_are_sorted_aligned_and_disjoint() {
        for scope in [Scope::Common, Scope::Instance] {
            let rows: Vec<_> = REGISTERS.iter().filter(|r| r.scope == scope).collect();
            for w in rows.windows(2) {
                assert!(w[0].offset + u64::from(w[0].width) <= w[1].offset, "{w:?}");
            }
            for r in &rows {
                assert!(r.offset.is_multiple_of(u64::from(r.width)), "{}", r.name);
                let room = match scope {
                    Scope::Common => CHMU_FIRST_INSTANCE,
                    Scope::Instance => CHMU_RANGE_BITMAP,
                };
                assert!(r.offset + u64::from(r.width) <= room, "{}", r.name);
                let width_bits = u64::MAX >> (64 - 8 * u32::from(r.width));
                assert_eq!((r.wmask | r.w1c) & !width_bits, 0, "{}", r.name);
            }
        }
    }

    /// Oracle: the masks written out from the spec's field tables (CXL 3.2 §8.2.8.3-4) as bit
    /// positions, against the same masks built from the field setters.
    #[test]
    fn masks_cover_exactly_the_spec_fields() {
        let bits = |r: std::ops::RangeInclusive<u32>| r.fold(0u64, |m, b| m | 1 << b);
        assert_eq!(
            CFG0_WMASK,
            bits(0..=7) | bits(8..=10) | bits(16..=17) | bits(32..=63)
        );
        assert_eq!(
            CFG1_WMASK,
            bits(0..=31) | bits(32..=35) | bits(40..=47) | bits(48..=51) | bits(52..=63)
        );
        assert_eq!(CFG2_WMASK, bits(0..=15));
        assert_eq!(STATUS_W1C, bits(40..=41));
        let cfg0: u64 = ChmuCfg0::new()
            .with_m2s_req_type(0xff)
            .with_randomized_downsampling(true)
            .with_overflow_int_en(true)
            .with_fill_int_en(true)
            .with_enable(true)
            .with_reset_counters(true)
            .with_threshold(u32::MAX)
            .into();
        assert_eq!(cfg0, CFG0_WMASK);
        let cfg1: u64 = ChmuCfg1::new()
            .with_unit_size(u32::MAX)
            .with_downsampling(0xf)
            .with_reporting_mode(0xff)
            .with_epoch_scale(0xf)
            .with_epoch_mult(0xfff)
            .into();
        assert_eq!(cfg1, CFG1_WMASK);
        let st: u64 = ChmuStatus::new()
            .with_overflow(true)
            .with_fill_reached(true)
            .into();
        assert_eq!(st, STATUS_W1C);
    }

    #[test]
    fn only_cfg0_has_a_hook_and_only_tail_a_lock() {
        let hooked: Vec<_> = REGISTERS
            .iter()
            .filter(|r| r.post_write != PostWrite::None)
            .map(|r| r.offset)
            .collect();
        assert_eq!(hooked, [CHMU_CFG0]);
        let locked: Vec<_> = REGISTERS
            .iter()
            .filter(|r| r.lock != Lock::Never)
            .map(|r| r.offset)
            .collect();
        assert_eq!(locked, [CHMU_HOTLIST_TAIL]);
        assert_eq!(instance_reg_at(0x6b).map(|r| r.offset), Some(0x6a));
        assert_eq!(instance_reg_at(0x6c), None);
        assert_eq!(instance_reg_at(0x44).map(|r| r.offset), Some(0x40));
    }

    #[test]
    fn reset_values_come_from_the_capabilities() {
        let c = ChmuConfig::default().fitted();
        assert_eq!(Reset::CommonCap0.value(&c, 0), 0x0201);
        assert_eq!(Reset::CommonCap1.value(&c, 0), 0x3000);
        assert_eq!(Reset::Cap2.value(&c, 1), 0x70);
        assert_eq!(Reset::Cap3.value(&c, 1), 0xff0);
        assert_eq!(Reset::Status.value(&c, 1), 16 << 32);
        assert_eq!(Reset::Zero.value(&c, 1), 0);
    }
}
