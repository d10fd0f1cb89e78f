//! CXL 3.2 register definitions for the emulated memory device: the DVSECs that locate the
//! registers (CXL 3.2 §8.1.3 "PCIe DVSEC for CXL Devices", §8.1.9 "Register Locator DVSEC")
//! and the CXL Hotness Monitoring Unit register interface (CXL 3.2 §8.2.8 "CHMU Register
//! Interface": §8.2.8.1 common capability, §8.2.8.2 capability, §8.2.8.3 configuration,
//! §8.2.8.4 status, §8.2.8.5/6 hotlist head/tail, §8.2.8.7 range bitmap, §8.2.8.8 hotlist).
//!
//! One definition shared by the device model and the guest driver; how each register behaves
//! (reset value, masks, hooks) is the register table, [`super::chmu_table`]. Offsets follow the spec's
//! section headings (instance i at 10h + CHMU Instance Length x i; its bitmap and hotlist at
//! the offsets its capability reports), which the Linux CHMU RFC driver (drivers/cxl/hmu.c)
//! and QEMU's RFC v2 model (hw/cxl/cxl-chmu.c) also use. Readings chosen where sources differ:
//! - CFG1 down-sampling factor is 4 bits \[35:32\] (§8.2.8.3; QEMU v2 decoded 8 bits);
//! - CAP1 down-sampling bit N means factor 2^N, bit 0 = no down-sampling;
//! - hotlist entries carry the count in the low `STATUS.counter_width` bits, unit index above
//!   (§8.2.8.8);
//! - TAIL is writable by the host only while the instance is disabled (§8.2.8.6 makes a
//!   change while enabled undefined; this model ignores it).

use bitfield_struct::bitfield;

/// CXL memory device class code: memory controller (0x05), CXL (0x02), prog-if 0x10.
pub const CXL_MEMDEV_CLASS_CODE: u32 = 0x05_02_10;
pub const EMU_VENDOR_ID: u16 = 0x1b36;
pub const EMU_DEVICE_ID: u16 = 0x5d11;

/// DVSEC vendor ID of the CXL consortium.
pub const CXL_DVSEC_VENDOR: u16 = 0x1e98;
/// DVSEC ID 0: PCIe DVSEC for CXL devices.
pub const CXL_DVSEC_PCIE_DEVICE: u16 = 0;
/// DVSEC ID 8: Register Locator.
pub const CXL_DVSEC_REG_LOCATOR: u16 = 8;
/// Offset of the first entry in the Register Locator DVSEC.
pub const REG_LOCATOR_FIRST_ENTRY: usize = 0x0c;

/// Register Locator block identifiers.
pub const RBI_COMPONENT: u8 = 1;
pub const RBI_MEMDEV: u8 = 3;
pub const RBI_CPMU: u8 = 4;
pub const RBI_CHMU: u8 = 5;

/// BAR holding the MSI-X table.
pub const MSIX_BAR: u8 = 0;
/// BAR holding the CXL register blocks (64-bit).
pub const REGS_BAR: u8 = 2;
/// Register blocks of [`REGS_BAR`], each 64 KiB aligned as the locator requires (CXL 3.2
/// §8.1.9): the Component Registers (block 1) first, the Memory Device registers (block 3)
/// next, the CHMU (block 5) last so it may grow past 64 KiB.
pub const COMPONENT_BLOCK_OFFSET: u64 = 0;
pub const MEMDEV_BLOCK_OFFSET: u64 = 0x10000;
/// Offset of the CHMU block in [`REGS_BAR`].
pub const CHMU_BLOCK_OFFSET: u64 = 0x20000;
/// Size mapped per register block: the whole CHMU (every instance and its hotlist) lies in it.
pub const CHMU_BLOCK_SIZE: u64 = 0x10000;
/// Where the optional hotlist window goes in [`REGS_BAR`] (right after the register block).
/// Outside the spec: CAP3 then points past the instance and the block.
pub const CHMU_HOTLIST_WINDOW: u64 = CHMU_BLOCK_OFFSET + CHMU_BLOCK_SIZE;
/// Page size of the mappings the guest gets of the hotlists.
pub const CHMU_PAGE: u64 = 0x1000;

/// Register Locator entry, low dword.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct RegLocLow {
    #[bits(3)]
    pub bir: u8,
    #[bits(5)]
    __: u8,
    pub block_id: u8,
    /// Offset bits 31:16.
    pub offset_hi16: u16,
}

impl RegLocLow {
    /// Byte offset within the BAR encoded by this entry and its high dword.
    pub fn offset(self, high: u32) -> u64 {
        (u64::from(high) << 32) | (u64::from(self.offset_hi16()) << 16)
    }
}

// CHMU common capability (relative to the CHMU block).
pub const CHMU_COMMON_CAP0: u64 = 0x00;
pub const CHMU_COMMON_CAP1: u64 = 0x08;
pub const CHMU_FIRST_INSTANCE: u64 = 0x10;

// Per-instance registers (relative to the instance base).
pub const CHMU_CAP0: u64 = 0x00;
pub const CHMU_CAP1: u64 = 0x08;
pub const CHMU_CAP2: u64 = 0x10;
pub const CHMU_CAP3: u64 = 0x18;
pub const CHMU_CFG0: u64 = 0x40;
pub const CHMU_CFG1: u64 = 0x48;
pub const CHMU_CFG2: u64 = 0x50;
pub const CHMU_STATUS: u64 = 0x60;
pub const CHMU_HOTLIST_HEAD: u64 = 0x68;
pub const CHMU_HOTLIST_TAIL: u64 = 0x6a;
/// Range bitmap offset this model reports in CAP2 (QEMU's value).
pub const CHMU_RANGE_BITMAP: u64 = 0x70;
/// Bytes of range bitmap the compact layout reserves: 1 bit per 256 MiB of DPA, 1 TiB.
pub const CHMU_RANGE_BITMAP_BYTES: u64 = 512;
/// Granularity of one range-bitmap bit.
pub const CHMU_RANGE_UNIT: u64 = 256 << 20;
/// CAP3 of the compact layout: the hotlist right after a 512-byte bitmap (QEMU's value).
pub const CHMU_HOTLIST_COMPACT: u64 = CHMU_RANGE_BITMAP + CHMU_RANGE_BITMAP_BYTES;
/// CAP3 of the paged layout. Instance i starts at block + 10h + i x length, so with a page
/// multiple as instance length, a hotlist at instance + FF0h starts on a page boundary in every
/// instance (the block itself is 64 KiB aligned) and can be mapped into the guest.
pub const CHMU_HOTLIST_PAGED: u64 = CHMU_PAGE - CHMU_FIRST_INSTANCE;

/// CHMU Common Capability 0.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct CommonCap0 {
    #[bits(4)]
    pub version: u8,
    #[bits(4)]
    __: u8,
    pub num_instances: u8,
    #[bits(48)]
    __: u64,
}

/// CHMU Common Capability 1.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct CommonCap1 {
    pub instance_length: u16,
    #[bits(48)]
    __: u64,
}

/// Instance CAP0.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ChmuCap0 {
    #[bits(4)]
    pub int_msg_num: u8,
    pub overflow_int: bool,
    pub fill_int: bool,
    #[bits(2)]
    pub epoch_type: u8,
    #[bits(6)]
    pub tracked_m2s: u8,
    #[bits(2)]
    __: u8,
    #[bits(4)]
    pub max_epoch_scale: u8,
    #[bits(12)]
    pub max_epoch_mult: u16,
    #[bits(4)]
    pub min_epoch_scale: u8,
    #[bits(12)]
    pub min_epoch_mult: u16,
    pub hotlist_size: u16,
}

/// Instance CAP1.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ChmuCap1 {
    /// Bit N: unit size 2^(N+8) bytes supported.
    pub unit_sizes: u32,
    /// Bit N: down-sampling factor 2^N supported.
    pub downsampling: u16,
    pub epoch_reporting: bool,
    pub always_on_reporting: bool,
    pub randomized_downsampling: bool,
    pub overlapping_ranges: bool,
    pub insert_after_clear: bool,
    #[bits(11)]
    __: u16,
}

/// Instance CFG0.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ChmuCfg0 {
    pub m2s_req_type: u8,
    pub randomized_downsampling: bool,
    pub overflow_int_en: bool,
    pub fill_int_en: bool,
    #[bits(5)]
    __: u8,
    pub enable: bool,
    pub reset_counters: bool,
    #[bits(14)]
    __: u16,
    pub threshold: u32,
}

/// Instance CFG1.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ChmuCfg1 {
    /// log2 of the unit size in bytes.
    pub unit_size: u32,
    #[bits(4)]
    pub downsampling: u8,
    #[bits(4)]
    __: u8,
    pub reporting_mode: u8,
    #[bits(4)]
    pub epoch_scale: u8,
    #[bits(12)]
    pub epoch_mult: u16,
}

/// Instance CFG2.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ChmuCfg2 {
    pub fill_threshold: u16,
    #[bits(48)]
    __: u64,
}

/// Instance STATUS.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ChmuStatus {
    pub enabled: bool,
    #[bits(15)]
    __: u16,
    pub op_in_progress: u16,
    pub counter_width: u8,
    pub overflow: bool,
    pub fill_reached: bool,
    #[bits(22)]
    __: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits64(clear: impl Fn(u64) -> u64) -> u64 {
        !clear(u64::MAX)
    }

    // Oracle: positions written from the spec tables (CXL 3.2 §8.1.9 and §8.2.8), not from the code.
    #[test]
    fn register_locator_entry_fields() {
        let f = |c: fn(RegLocLow) -> RegLocLow| !u32::from(c(RegLocLow::from(u32::MAX)));
        assert_eq!(f(|r| r.with_bir(0)), 0b111);
        assert_eq!(f(|r| r.with_block_id(0)), 0xff00);
        assert_eq!(f(|r| r.with_offset_hi16(0)), 0xffff_0000);
        assert_eq!(RegLocLow::from(0x0003_0502).offset(1), 0x1_0003_0000);
    }

    #[test]
    fn common_capability_fields() {
        assert_eq!(bits64(|w| CommonCap0::from(w).with_version(0).into()), 0xf);
        assert_eq!(
            bits64(|w| CommonCap0::from(w).with_num_instances(0).into()),
            0xff00
        );
        assert_eq!(
            bits64(|w| CommonCap1::from(w).with_instance_length(0).into()),
            0xffff
        );
    }

    #[test]
    fn instance_cap0_fields() {
        let c = |f: fn(ChmuCap0) -> ChmuCap0| !u64::from(f(ChmuCap0::from(u64::MAX)));
        assert_eq!(c(|r| r.with_int_msg_num(0)), 0xf);
        assert_eq!(c(|r| r.with_overflow_int(false)), 1 << 4);
        assert_eq!(c(|r| r.with_fill_int(false)), 1 << 5);
        assert_eq!(c(|r| r.with_epoch_type(0)), 0b11 << 6);
        assert_eq!(c(|r| r.with_tracked_m2s(0)), 0x3f << 8);
        assert_eq!(c(|r| r.with_max_epoch_scale(0)), 0xf << 16);
        assert_eq!(c(|r| r.with_max_epoch_mult(0)), 0xfff << 20);
        assert_eq!(c(|r| r.with_min_epoch_scale(0)), 0xf << 32);
        assert_eq!(c(|r| r.with_min_epoch_mult(0)), 0xfff << 36);
        assert_eq!(c(|r| r.with_hotlist_size(0)), 0xffff << 48);
    }

    #[test]
    fn instance_cap1_fields() {
        let c = |f: fn(ChmuCap1) -> ChmuCap1| !u64::from(f(ChmuCap1::from(u64::MAX)));
        assert_eq!(c(|r| r.with_unit_sizes(0)), 0xffff_ffff);
        assert_eq!(c(|r| r.with_downsampling(0)), 0xffff << 32);
        assert_eq!(c(|r| r.with_epoch_reporting(false)), 1 << 48);
        assert_eq!(c(|r| r.with_always_on_reporting(false)), 1 << 49);
        assert_eq!(c(|r| r.with_randomized_downsampling(false)), 1 << 50);
        assert_eq!(c(|r| r.with_overlapping_ranges(false)), 1 << 51);
        assert_eq!(c(|r| r.with_insert_after_clear(false)), 1 << 52);
    }

    #[test]
    fn instance_cfg_and_status_fields() {
        let c0 = |f: fn(ChmuCfg0) -> ChmuCfg0| !u64::from(f(ChmuCfg0::from(u64::MAX)));
        assert_eq!(c0(|r| r.with_m2s_req_type(0)), 0xff);
        assert_eq!(c0(|r| r.with_randomized_downsampling(false)), 1 << 8);
        assert_eq!(c0(|r| r.with_overflow_int_en(false)), 1 << 9);
        assert_eq!(c0(|r| r.with_fill_int_en(false)), 1 << 10);
        assert_eq!(c0(|r| r.with_enable(false)), 1 << 16);
        assert_eq!(c0(|r| r.with_reset_counters(false)), 1 << 17);
        assert_eq!(c0(|r| r.with_threshold(0)), 0xffff_ffff << 32);
        let c1 = |f: fn(ChmuCfg1) -> ChmuCfg1| !u64::from(f(ChmuCfg1::from(u64::MAX)));
        assert_eq!(c1(|r| r.with_unit_size(0)), 0xffff_ffff);
        assert_eq!(c1(|r| r.with_downsampling(0)), 0xf << 32);
        assert_eq!(c1(|r| r.with_reporting_mode(0)), 0xff << 40);
        assert_eq!(c1(|r| r.with_epoch_scale(0)), 0xf << 48);
        assert_eq!(c1(|r| r.with_epoch_mult(0)), 0xfff << 52);
        assert_eq!(
            bits64(|w| ChmuCfg2::from(w).with_fill_threshold(0).into()),
            0xffff
        );
        let s = |f: fn(ChmuStatus) -> ChmuStatus| !u64::from(f(ChmuStatus::from(u64::MAX)));
        assert_eq!(s(|r| r.with_enabled(false)), 1);
        assert_eq!(s(|r| r.with_op_in_progress(0)), 0xffff << 16);
        assert_eq!(s(|r| r.with_counter_width(0)), 0xff << 32);
        assert_eq!(s(|r| r.with_overflow(false)), 1 << 40);
        assert_eq!(s(|r| r.with_fill_reached(false)), 1 << 41);
    }

    #[test]
    fn instance_offsets_are_sorted_aligned_unique() {
        let offs = [
            (CHMU_CAP0, 0x00),
            (CHMU_CAP1, 0x08),
            (CHMU_CAP2, 0x10),
            (CHMU_CAP3, 0x18),
            (CHMU_CFG0, 0x40),
            (CHMU_CFG1, 0x48),
            (CHMU_CFG2, 0x50),
            (CHMU_STATUS, 0x60),
            (CHMU_HOTLIST_HEAD, 0x68),
            (CHMU_HOTLIST_TAIL, 0x6a),
        ];
        for (got, want) in offs {
            assert_eq!(got, want);
        }
        for w in offs.windows(2) {
            assert!(w[0].0 < w[1].0);
        }
        const { assert!(CHMU_RANGE_BITMAP >= CHMU_HOTLIST_TAIL + 2) };
        const { assert!(CHMU_HOTLIST_COMPACT.is_multiple_of(8)) };
        // Instance 0 at block + 10h, its hotlist at + CAP3: page aligned.
        assert_eq!((0x10 + CHMU_HOTLIST_PAGED) % 0x1000, 0);
        assert_eq!(CHMU_HOTLIST_PAGED, 0xff0);
    }
}
