//! The Component Registers (Register Locator block 1; CXL 3.2 §8.2.4) as one table: the
//! CXL.io part (0x0000-0x0FFF, reserved here) and the CXL.cache and CXL.mem registers at
//! +0x1000, starting with the CXL Capability Header and its array (§8.2.4.1-2), which lists
//! one capability: the CXL HDM Decoder Capability Structure (§8.2.4.20) with one decoder.
//!
//! Decoder 0 resets the way platform firmware leaves a device whose memory is in use: it
//! decodes the device's range (base and size from the range, one way, DPA skip 0), is
//! committed and locked (Lock On Commit), and HDM decoding is enabled; only the Global
//! Control's HDM Decoder Enable is writable.
//!
//! Left out: RAS, Security, Link and every other CXL.cache/mem capability; decoder commit by
//! the host (the decoder is locked); poison on decode error.

use super::block_table::{ro, rw, BlockReg, Reset};
use bitfield_struct::bitfield;

/// Offset of the CXL.cache and CXL.mem registers in the block.
pub const CACHE_MEM_OFFSET: u64 = 0x1000;
/// Where this model puts the HDM Decoder Capability Structure (from [`CACHE_MEM_OFFSET`]).
pub const HDM_DECODER_POINTER: u64 = 0x100;
/// CXL Capability IDs (§8.2.4, CXL Capability ID table).
pub const CAP_ID_CXL: u16 = 0x0001;
pub const CAP_ID_HDM_DECODER: u16 = 0x0005;
/// HDM Decoder Capability version in CXL 3.x.
pub const HDM_DECODER_VERSION: u8 = 3;

/// HDM decoder registers, relative to the structure (§8.2.4.20.1-.20.13).
pub const HDM_CAPABILITY: u64 = 0x00;
pub const HDM_GLOBAL_CONTROL: u64 = 0x04;
pub const HDM_DECODER0_BASE_LOW: u64 = 0x10;
pub const HDM_DECODER0_BASE_HIGH: u64 = 0x14;
pub const HDM_DECODER0_SIZE_LOW: u64 = 0x18;
pub const HDM_DECODER0_SIZE_HIGH: u64 = 0x1c;
pub const HDM_DECODER0_CONTROL: u64 = 0x20;
pub const HDM_DECODER0_DPA_SKIP_LOW: u64 = 0x24;
pub const HDM_DECODER0_DPA_SKIP_HIGH: u64 = 0x28;
/// Bytes of the structure with one decoder.
pub const HDM_DECODER_LENGTH: u64 = 0x10 + 0x20;

/// CXL Capability Header (§8.2.4.1), at [`CACHE_MEM_OFFSET`].
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct CxlCapabilityHeader {
    pub capability_id: u16,
    #[bits(4)]
    pub capability_version: u8,
    #[bits(4)]
    pub cache_mem_version: u8,
    /// Number of capability headers that follow.
    pub array_size: u8,
}

/// A capability header of the array (§8.2.4.2 onwards).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct CxlCapabilityPointer {
    pub capability_id: u16,
    #[bits(4)]
    pub version: u8,
    /// Offset of the structure from [`CACHE_MEM_OFFSET`].
    #[bits(12)]
    pub pointer: u16,
}

/// HDM Decoder Capability Register (§8.2.4.20.1).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct HdmCapability {
    /// 0 = 1 decoder, n = 2n decoders (up to 8), then 12, 16, 20... (spec encoding).
    #[bits(4)]
    pub decoder_count: u8,
    #[bits(4)]
    pub target_count: u8,
    pub a11to8_interleave_capable: bool,
    pub a14to12_interleave_capable: bool,
    pub poison_on_decode_error_capable: bool,
    pub interleave_3_6_12_capable: bool,
    pub interleave_16_capable: bool,
    #[bits(19)]
    __: u32,
}

/// HDM Decoder Global Control Register (§8.2.4.20.2).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct HdmGlobalControl {
    pub poison_on_decode_error_enable: bool,
    pub hdm_decoder_enable: bool,
    #[bits(30)]
    __: u32,
}

/// HDM Decoder n Control Register (§8.2.4.20.7).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct HdmDecoderControl {
    /// Interleave Granularity: 256 B << IG.
    #[bits(4)]
    pub ig: u8,
    /// Interleave Ways (encoded; 0 = 1 way).
    #[bits(4)]
    pub iw: u8,
    pub lock_on_commit: bool,
    pub commit: bool,
    pub committed: bool,
    pub error_not_committed: bool,
    /// Target Device Type: 1 = host-only coherent (a Type 3 device).
    pub target_device_type: bool,
    #[bits(19)]
    __: u32,
}

const fn cm(off: u64) -> u64 {
    CACHE_MEM_OFFSET + off
}

const fn hdm(off: u64) -> u64 {
    cm(HDM_DECODER_POINTER + off)
}

/// A decoder 0 base or size dword, from the device's range.
const fn range_dword(offset: u64, name: &'static str, size: bool, high: bool) -> BlockReg {
    BlockReg {
        reset: Reset::Range { size, high },
        ..ro(offset, name, 4, 0)
    }
}

/// CXL Capability Header: CXL capability (ID 1), version 1, CXL.cache/mem version 1, one
/// capability in the array.
pub const CXL_CAPABILITY_HEADER_RESET: u64 = 0x0111_0001;
/// The array's one entry: HDM Decoder (ID 5), version 3, at [`HDM_DECODER_POINTER`].
pub const HDM_POINTER_RESET: u64 =
    CAP_ID_HDM_DECODER as u64 | (HDM_DECODER_VERSION as u64) << 16 | HDM_DECODER_POINTER << 20;
/// HDM Decoder Capability: one decoder, A11to8 and A14to12 interleave capable.
pub const HDM_CAPABILITY_RESET: u64 = 0x300;
/// HDM Decoder Enable \[1\].
pub const HDM_GLOBAL_CONTROL_ENABLE: u64 = 0b10;
/// Decoder 0 Control: Lock On Commit \[8\], Commit \[9\], Committed \[10\], Target Device Type
/// \[12\] (host-only coherent).
pub const HDM_DECODER0_CONTROL_RESET: u64 = 1 << 8 | 1 << 9 | 1 << 10 | 1 << 12;

/// The register table, in offset order.
#[rustfmt::skip]
pub const COMPONENT_REGISTERS: &[BlockReg] = &[
    ro(cm(0), "CXL Capability Header", 4, CXL_CAPABILITY_HEADER_RESET),
    ro(cm(4), "CXL HDM Decoder Capability Header", 4, HDM_POINTER_RESET),
    ro(hdm(HDM_CAPABILITY), "HDM Decoder Capability", 4, HDM_CAPABILITY_RESET),
    BlockReg { reset: Reset::Value(HDM_GLOBAL_CONTROL_ENABLE), ..rw(hdm(HDM_GLOBAL_CONTROL), "HDM Decoder Global Control", 4, HDM_GLOBAL_CONTROL_ENABLE) },
    range_dword(hdm(HDM_DECODER0_BASE_LOW), "HDM Decoder 0 Base Low", false, false),
    range_dword(hdm(HDM_DECODER0_BASE_HIGH), "HDM Decoder 0 Base High", false, true),
    range_dword(hdm(HDM_DECODER0_SIZE_LOW), "HDM Decoder 0 Size Low", true, false),
    range_dword(hdm(HDM_DECODER0_SIZE_HIGH), "HDM Decoder 0 Size High", true, true),
    ro(hdm(HDM_DECODER0_CONTROL), "HDM Decoder 0 Control", 4, HDM_DECODER0_CONTROL_RESET),
    ro(hdm(HDM_DECODER0_DPA_SKIP_LOW), "HDM Decoder 0 DPA Skip Low", 4, 0),
    ro(hdm(HDM_DECODER0_DPA_SKIP_HIGH), "HDM Decoder 0 DPA Skip High", 4, 0),
];

#[cfg(test)]
mod tests {
    use super::*;

    // Oracles: bit positions from the spec's register tables.
    #[test]
    fn register_fields_sit_at_the_spec_positions() {
        let h = |f: fn(CxlCapabilityHeader) -> CxlCapabilityHeader| {
            !u32::from(f(CxlCapabilityHeader::from(u32::MAX)))
        };
        assert_eq!(h(|r| r.with_capability_version(0)), 0xf << 16);
        assert_eq!(h(|r| r.with_cache_mem_version(0)), 0xf << 20);
        assert_eq!(h(|r| r.with_array_size(0)), 0xff << 24);
        let p = |f: fn(CxlCapabilityPointer) -> CxlCapabilityPointer| {
            !u32::from(f(CxlCapabilityPointer::from(u32::MAX)))
        };
        assert_eq!(p(|r| r.with_pointer(0)), 0xfff << 20);
        let c =
            |f: fn(HdmCapability) -> HdmCapability| !u32::from(f(HdmCapability::from(u32::MAX)));
        assert_eq!(c(|r| r.with_target_count(0)), 0xf << 4);
        assert_eq!(c(|r| r.with_a11to8_interleave_capable(false)), 1 << 8);
        assert_eq!(c(|r| r.with_interleave_16_capable(false)), 1 << 12);
        let d = |f: fn(HdmDecoderControl) -> HdmDecoderControl| {
            !u32::from(f(HdmDecoderControl::from(u32::MAX)))
        };
        assert_eq!(d(|r| r.with_iw(0)), 0xf << 4);
        assert_eq!(d(|r| r.with_lock_on_commit(false)), 1 << 8);
        assert_eq!(d(|r| r.with_commit(false)), 1 << 9);
        assert_eq!(d(|r| r.with_committed(false)), 1 << 10);
        assert_eq!(d(|r| r.with_error_not_committed(false)), 1 << 11);
        assert_eq!(d(|r| r.with_target_device_type(false)), 1 << 12);
        let g = |f: fn(HdmGlobalControl) -> HdmGlobalControl| {
            !u32::from(f(HdmGlobalControl::from(u32::MAX)))
        };
        assert_eq!(g(|r| r.with_hdm_decoder_enable(false)), 1 << 1);
    }

    #[test]
    fn the_table_is_well_formed_and_its_values_match_the_fields() {
        super::super::block_table::assert_well_formed(COMPONENT_REGISTERS);
        let header = CxlCapabilityHeader::new()
            .with_capability_id(CAP_ID_CXL)
            .with_capability_version(1)
            .with_cache_mem_version(1)
            .with_array_size(1);
        assert_eq!(u64::from(u32::from(header)), CXL_CAPABILITY_HEADER_RESET);
        let ptr = CxlCapabilityPointer::new()
            .with_capability_id(CAP_ID_HDM_DECODER)
            .with_version(HDM_DECODER_VERSION)
            .with_pointer(HDM_DECODER_POINTER as u16);
        assert_eq!(u64::from(u32::from(ptr)), HDM_POINTER_RESET);
        let cap = HdmCapability::new()
            .with_a11to8_interleave_capable(true)
            .with_a14to12_interleave_capable(true);
        assert_eq!(u64::from(u32::from(cap)), HDM_CAPABILITY_RESET);
        let g = HdmGlobalControl::new().with_hdm_decoder_enable(true);
        assert_eq!(u64::from(u32::from(g)), HDM_GLOBAL_CONTROL_ENABLE);
        let ctl = HdmDecoderControl::new()
            .with_lock_on_commit(true)
            .with_commit(true)
            .with_committed(true)
            .with_target_device_type(true);
        assert_eq!(u64::from(u32::from(ctl)), HDM_DECODER0_CONTROL_RESET);
    }
}
