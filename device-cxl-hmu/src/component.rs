//! The Component Registers block (Register Locator block 1; CXL 3.2 §8.2.4): the CXL.io part
//! (0x0000-0x0FFF, reserved here) and the CXL.cache and CXL.mem registers at +0x1000, starting
//! with the CXL Capability Header and its array (§8.2.4.1-2), which lists one capability: the
//! CXL HDM Decoder Capability Structure (§8.2.4.20) with one decoder.
//!
//! Decoder 0 comes up the way platform firmware leaves a device whose memory is in use: it
//! decodes the monitored range (base = DVSEC Range 1 Base, size = the device's capacity, one
//! way, DPA skip 0), is committed and locked (Lock On Commit), and HDM decoding is enabled.
//! Writes to a locked decoder are dropped. The Global Control's HDM Decoder Enable stays
//! writable.
//!
//! Left out: RAS, Security, Link and every other CXL.cache/mem capability; decoder commit by
//! the host (the decoder is locked); poison on decode error.

use crate::device::MemRange;
use crate::regfile::RegFile;
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

/// The Component Registers block.
#[derive(Debug)]
pub struct ComponentBlock {
    regs: RegFile,
    range: MemRange,
}

const fn cm(off: u64) -> usize {
    (CACHE_MEM_OFFSET + off) as usize
}

const fn hdm(off: u64) -> usize {
    cm(HDM_DECODER_POINTER + off)
}

impl ComponentBlock {
    pub fn new(range: MemRange) -> Self {
        let mut b = Self {
            regs: RegFile::new("component", 0x2000),
            range,
        };
        b.reset();
        b
    }

    pub fn reset(&mut self) {
        let r = &mut self.regs;
        r.bytes.fill(0);
        r.wmask.fill(0);
        let header = CxlCapabilityHeader::new()
            .with_capability_id(CAP_ID_CXL)
            .with_capability_version(1)
            .with_cache_mem_version(1)
            .with_array_size(1);
        r.put_u32(cm(0), header.into(), 0);
        let ptr = CxlCapabilityPointer::new()
            .with_capability_id(CAP_ID_HDM_DECODER)
            .with_version(HDM_DECODER_VERSION)
            .with_pointer(HDM_DECODER_POINTER as u16);
        r.put_u32(cm(4), ptr.into(), 0);
        let cap = HdmCapability::new()
            .with_a11to8_interleave_capable(true)
            .with_a14to12_interleave_capable(true);
        r.put_u32(hdm(HDM_CAPABILITY), cap.into(), 0);
        let global = HdmGlobalControl::new().with_hdm_decoder_enable(true);
        let global_mask = HdmGlobalControl::new().with_hdm_decoder_enable(true);
        r.put_u32(hdm(HDM_GLOBAL_CONTROL), global.into(), global_mask.into());
        let (base, size) = (self.range.hpa_base, self.range.size);
        r.put_u32(hdm(HDM_DECODER0_BASE_LOW), base as u32 & 0xf000_0000, 0);
        r.put_u32(hdm(HDM_DECODER0_BASE_HIGH), (base >> 32) as u32, 0);
        r.put_u32(hdm(HDM_DECODER0_SIZE_LOW), size as u32 & 0xf000_0000, 0);
        r.put_u32(hdm(HDM_DECODER0_SIZE_HIGH), (size >> 32) as u32, 0);
        let ctl = HdmDecoderControl::new()
            .with_lock_on_commit(true)
            .with_commit(true)
            .with_committed(true)
            .with_target_device_type(true);
        r.put_u32(hdm(HDM_DECODER0_CONTROL), ctl.into(), 0);
    }

    pub fn counters(&self) -> crate::regfile::AccessCounters {
        self.regs.counters.clone()
    }

    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.regs.read(offset, data);
    }

    /// Only the Global Control's HDM Decoder Enable is writable (decoder 0 is locked).
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.regs.write(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(b: &mut ComponentBlock, off: u64) -> u32 {
        let mut d = [0u8; 4];
        b.mmio_read(off, &mut d);
        u32::from_le_bytes(d)
    }

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
    fn the_hdm_decoder_is_found_through_the_capability_array_and_decodes_the_range() {
        let range = MemRange {
            hpa_base: 0x1_4000_0000,
            size: 0x8000_0000,
        };
        let mut b = ComponentBlock::new(range);
        let header = rd(&mut b, 0x1000);
        assert_eq!((header & 0xffff, header >> 24), (1, 1));
        let ptr = rd(&mut b, 0x1004);
        assert_eq!(ptr & 0xffff, 5);
        let s = 0x1000 + u64::from(ptr >> 20);
        assert_eq!(rd(&mut b, s) & 0xf, 0, "one decoder");
        assert_eq!(rd(&mut b, s + 4), 0b10, "HDM decoding enabled");
        assert_eq!(rd(&mut b, s + 0x10), 0x4000_0000);
        assert_eq!(rd(&mut b, s + 0x14), 1);
        assert_eq!(rd(&mut b, s + 0x18), 0x8000_0000);
        assert_eq!(rd(&mut b, s + 0x1c), 0);
        let ctl = rd(&mut b, s + 0x20);
        assert_eq!(
            ctl & (1 << 10 | 1 << 8 | 1 << 12),
            1 << 10 | 1 << 8 | 1 << 12
        );
        // Locked: a write to the decoder is dropped.
        b.mmio_write(s + 0x10, &0u32.to_le_bytes());
        assert_eq!(rd(&mut b, s + 0x10), 0x4000_0000);
        b.mmio_write(s + 4, &0u32.to_le_bytes());
        assert_eq!(rd(&mut b, s + 4), 0);
    }
}
