//! SDXi 1.0 in-memory structures (SNIA SDXi Specification v1.0a, the context-level and
//! descriptor chapters; cross-checked with Linux `drivers/dma/sdxi/hw.h` of AMD's SDXi series): context tables (L2, L1), context control
//! and status, AKey entries, descriptors, completion status blocks and error-log entries.
//!
//! Every structure is `#[repr(C)]` with little-endian fields, pinned by size asserts, named
//! after the spec structure; one definition shared by the device model and the guest driver.
//! Readings chosen where the public sources leave a fact open, kept here:
//! - L1/L2 indexing: L1 index = id & 0x7f, L2 index = id >> 7 (128-entry L1 tables);
//! - CXT_UPD / AKEY_UPD / FN_UPD bodies share SYNC's range layout;
//! - CST_BLK.signal is decremented atomically (a CSB may count several descriptors);
//! - COPY's attr byte is accepted and ignored.

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Entries of a level-1 context table (4 KiB / 32 B).
pub const L1_ENTRIES: u16 = 128;
/// Entries of the level-2 table (4 KiB / 8 B).
pub const L2_ENTRIES: u16 = 512;
/// Size of one descriptor.
pub const DESC_SIZE: u64 = 64;
/// Minimum ring size the spec allows (Table 3-1).
pub const MIN_RING_ENTRIES: u32 = 1024;
/// Entries in an error log of ERR_CFG.sz = n (the RFC driver writes entries >> 6: linear).
pub fn errlog_entries(sz: u8) -> u64 {
    (u64::from(sz).max(1)) * 64
}

/// L2 and L1 indices of a context.
pub fn table_indices(cxt: u16) -> (u16, u16) {
    (cxt >> 7, cxt & 0x7f)
}

/// Level-2 context table entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct CxtL2Ent {
    /// \[0\] vl, \[63:12\] L1 table pointer.
    pub lv1_ptr: U64,
}

impl CxtL2Ent {
    pub fn new(l1: u64) -> Self {
        Self {
            lv1_ptr: U64::new((l1 & !0xfff) | 1),
        }
    }
    pub fn vl(&self) -> bool {
        self.lv1_ptr.get() & 1 != 0
    }
    pub fn ptr(&self) -> u64 {
        self.lv1_ptr.get() & !0xfff
    }
}

/// Level-1 context table entry (CXT_TBL_ENT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct CxtL1Ent {
    /// \[0\] vl, \[1\] ka, \[2\] pv, \[63:6\] CXT_CTL pointer.
    pub cxt_ctl_ptr: U64,
    /// \[3:0\] akey_sz (2^(n+8) entries), \[63:12\] AKey table pointer.
    pub akey_ptr: U64,
    /// \[19:0\] pasid, \[23:20\] max_buffer.
    pub misc: U32,
    pub opb_000_enb: U32,
    pub rsvd: U64,
}

impl CxtL1Ent {
    pub fn vl(&self) -> bool {
        self.cxt_ctl_ptr.get() & 1 != 0
    }
    pub fn cxt_ctl(&self) -> u64 {
        self.cxt_ctl_ptr.get() & !0x3f
    }
    pub fn akey_table(&self) -> u64 {
        self.akey_ptr.get() & !0xfff
    }
    /// Number of AKey entries.
    pub fn akey_entries(&self) -> u32 {
        256 << (self.akey_ptr.get() & 0xf).min(8)
    }
}

/// Context control (CXT_CTL, 64 B).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct CxtCtl {
    /// \[0\] vl, \[3:2\] qos, \[4\] se, \[5\] csa, \[63:6\] descriptor ring pointer.
    pub ds_ring_ptr: U64,
    /// Ring size in descriptors.
    pub ds_ring_sz: U32,
    pub rsvd0: U32,
    /// \[63:4\] CXT_STS pointer.
    pub cxt_sts_ptr: U64,
    /// \[63:3\] write-index pointer.
    pub write_index_ptr: U64,
    pub rsvd1: [u8; 32],
}

impl CxtCtl {
    pub fn vl(&self) -> bool {
        self.ds_ring_ptr.get() & 1 != 0
    }
    pub fn ring(&self) -> u64 {
        self.ds_ring_ptr.get() & !0x3f
    }
    pub fn sts(&self) -> u64 {
        self.cxt_sts_ptr.get() & !0xf
    }
    pub fn write_index(&self) -> u64 {
        self.write_index_ptr.get() & !0x7
    }
}

/// Context state in CXT_STS byte 0 \[3:0\].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[repr(u8)]
pub enum CxtState {
    StopSw = 0,
    Run = 1,
    StopgSw = 2,
    StopFn = 4,
    StopgFn = 6,
    ErrFn = 0xf,
}

impl CxtState {
    pub fn from_bits(v: u8) -> Option<Self> {
        Some(match v & 0xf {
            0 => Self::StopSw,
            1 => Self::Run,
            2 => Self::StopgSw,
            4 => Self::StopFn,
            6 => Self::StopgFn,
            0xf => Self::ErrFn,
            _ => return None,
        })
    }
}

/// Context status (CXT_STS, 16 B).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct CxtSts {
    /// \[3:0\] context state.
    pub state: U32,
    pub rsvd: U32,
    /// Written by the device as it consumes descriptors.
    pub read_index: U64,
}

/// AKey table entry (AKEY_ENT, 16 B).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct AkeyEnt {
    /// \[0\] vl, \[1\] iv, \[2\] pv, \[14:4\] intr_num.
    pub intr: U16,
    pub tgt_sfunc: U16,
    /// \[19:0\] pasid, \[29\] pr.
    pub pasid: U32,
    pub stag: U16,
    pub rsvd0: U16,
    pub rkey: U16,
    pub rsvd1: U16,
}

impl AkeyEnt {
    pub fn new(intr_num: Option<u16>, tgt_sfunc: u16) -> Self {
        let mut intr = 1u16;
        if let Some(v) = intr_num {
            intr |= 2 | ((v & 0x7ff) << 4);
        }
        Self {
            intr: U16::new(intr),
            tgt_sfunc: U16::new(tgt_sfunc),
            ..Self::default()
        }
    }
    pub fn vl(&self) -> bool {
        self.intr.get() & 1 != 0
    }
    pub fn iv(&self) -> bool {
        self.intr.get() & 2 != 0
    }
    pub fn intr_num(&self) -> u16 {
        (self.intr.get() >> 4) & 0x7ff
    }
}

/// Descriptor header (dword 0).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct DscHeader {
    pub vl: bool,
    pub se: bool,
    pub fe: bool,
    pub ch: bool,
    pub csr: bool,
    pub rb: bool,
    #[bits(2)]
    __: u8,
    pub subtype: u8,
    #[bits(11)]
    pub ty: u16,
    #[bits(5)]
    __: u8,
}

/// Descriptor types.
pub const DSC_TYPE_DMAB: u16 = 0x001;
pub const DSC_TYPE_ADMIN: u16 = 0x002;
pub const DSC_TYPE_INTR: u16 = 0x004;
/// DMAB subtypes.
pub const DSC_DMAB_NOP: u8 = 0x01;
pub const DSC_DMAB_COPY: u8 = 0x03;
/// Admin subtypes.
pub const DSC_ADMIN_FN_UPD: u8 = 0x00;
pub const DSC_ADMIN_CXT_UPD: u8 = 0x01;
pub const DSC_ADMIN_AKEY_UPD: u8 = 0x02;
pub const DSC_ADMIN_CXT_START_NM: u8 = 0x03;
pub const DSC_ADMIN_CXT_STOP: u8 = 0x04;
pub const DSC_ADMIN_SYNC: u8 = 0x06;
pub const DSC_ADMIN_CXT_START_RS: u8 = 0x08;
/// INTR subtype.
pub const DSC_INTR: u8 = 0x00;

/// A generic 64-byte descriptor (DSC_GENERIC).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Descriptor {
    pub header: U32,
    pub body: [u8; 52],
    /// \[0\] np (no completion block), \[63:5\] CST_BLK pointer.
    pub csb_ptr: U64,
}

impl Default for Descriptor {
    fn default() -> Self {
        Self {
            header: U32::new(0),
            body: [0; 52],
            csb_ptr: U64::new(1),
        }
    }
}

impl Descriptor {
    pub fn header(&self) -> DscHeader {
        DscHeader::from(self.header.get())
    }
    /// The CST_BLK address, or None when np is set.
    pub fn csb(&self) -> Option<u64> {
        let v = self.csb_ptr.get();
        (v & 1 == 0).then_some(v & !0x1f)
    }
    /// The descriptor read in place as a typed layout (None only for a type that is not a
    /// 64-byte, byte-aligned layout). Cheaper than [`Self::as_type`] on a hot path: no copy.
    pub fn view<T: FromBytes + KnownLayout + Immutable>(&self) -> Option<&T> {
        T::ref_from_bytes(self.as_bytes()).ok()
    }
    /// Reinterprets the descriptor as a typed layout.
    pub fn as_type<T: FromBytes + IntoBytes + KnownLayout + Immutable>(&self) -> T {
        T::read_from_bytes(self.as_bytes()).unwrap_or_else(|_| T::new_zeroed())
    }
    pub fn from_type<T: IntoBytes + Immutable>(t: &T) -> Self {
        Self::read_from_bytes(t.as_bytes()).unwrap_or_default()
    }
    /// Builds a header word.
    pub fn header_for(ty: u16, subtype: u8, fe: bool) -> U32 {
        U32::new(
            DscHeader::new()
                .with_vl(true)
                .with_fe(fe)
                .with_ty(ty)
                .with_subtype(subtype)
                .into(),
        )
    }
    /// CSB pointer field for `csb` (None = no completion block).
    pub fn csb_field(csb: Option<u64>) -> U64 {
        U64::new(csb.map_or(1, |a| a & !0x1f))
    }
}

/// DMAB COPY body layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct DscDmabCopy {
    pub header: U32,
    /// Length - 1.
    pub size: U32,
    pub attr: u8,
    pub rsvd0: [u8; 3],
    pub akey0: U16,
    pub akey1: U16,
    pub addr0: U64,
    pub addr1: U64,
    pub rsvd1: [u8; 24],
    pub csb_ptr: U64,
}

/// IntrGrp INTR layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct DscIntr {
    pub header: U32,
    pub rsvd0: [u8; 8],
    pub akey: U16,
    pub rsvd1: [u8; 42],
    pub csb_ptr: U64,
}

/// Admin CXT_START_NM / CXT_START_RS / CXT_STOP layout (db_value unused by CXT_STOP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct DscCxtStart {
    pub header: U32,
    pub rsvd0: u8,
    pub vflags: u8,
    pub vf_num: U16,
    pub cxt_start: U16,
    pub cxt_end: U16,
    pub rsvd1: [u8; 4],
    pub db_value: U64,
    pub rsvd2: [u8; 32],
    pub csb_ptr: U64,
}

/// Admin SYNC layout (also CXT_UPD, AKEY_UPD, FN_UPD).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct DscSync {
    pub header: U32,
    /// \[2:0\] filter: 0 CXT, 1 STOP, 2 AKEY, 3 RKEY, 4 FN.
    pub cflags: u8,
    pub vflags: u8,
    pub vf_num: U16,
    pub cxt_start: U16,
    pub cxt_end: U16,
    pub key_start: U16,
    pub key_end: U16,
    pub rsvd: [u8; 40],
    pub csb_ptr: U64,
}

/// Completion status block (CST_BLK, 32 B).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct CstBlk {
    pub signal: U64,
    /// \[31\] er.
    pub flags: U32,
    pub rsvd: [u8; 20],
}

/// CST_BLK.flags error bit.
pub const CST_FLAGS_ER: u32 = 1 << 31;

/// Error-log header entry (ERRLOG_HD_ENT, 64 B).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ErrlogHdEnt {
    /// \[0\] vl, \[13:8\] step, \[26:16\] type, \[32\] cv, \[33\] div, \[34\] bv, \[38:36\] buf,
    /// \[43:40\] sub_step, \[46:44\] re, \[63:48\] cxt_num.
    pub hdr: U64,
    pub dsc_index: U64,
    pub rsvd0: [u8; 28],
    pub err_class: U16,
    pub rsvd1: [u8; 2],
    pub vendor: [u8; 4],
    pub rsvd2: [u8; 12],
}

/// ERRLOG_HD_ENT.type.
pub const ERRLOG_TYPE: u64 = 0x7f7;

/// ERRLOG_HD_ENT header word.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ErrlogHdr {
    pub vl: bool,
    #[bits(7)]
    __: u8,
    #[bits(6)]
    pub step: u8,
    #[bits(2)]
    __: u8,
    #[bits(11)]
    pub ty: u16,
    #[bits(5)]
    __: u8,
    pub cv: bool,
    pub div: bool,
    pub bv: bool,
    #[bits(1)]
    __: u8,
    #[bits(3)]
    pub buf: u8,
    #[bits(1)]
    __: u8,
    #[bits(4)]
    pub sub_step: u8,
    #[bits(3)]
    pub re: u8,
    #[bits(1)]
    __: u8,
    pub cxt_num: u16,
}

/// Error classes (ERRLOG_HD_ENT.err_class; this model's numbering, the public sources give
/// none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u16)]
pub enum ErrClass {
    /// Unknown type or subtype, admin op on a data context.
    InvalidDescriptor = 1,
    /// An address outside what the guest mapped (or a write to a read-only map).
    AddressFault = 2,
    /// COPY source and destination overlap.
    Overlap = 3,
    /// AKey index beyond the table, or entry not valid (or no interrupt for INTR).
    InvalidAkey = 4,
    /// Context table entry, CXT_CTL or context range not valid.
    InvalidContext = 5,
    /// Read index beyond the write index, or more outstanding than the ring holds.
    RingIndex = 6,
}

pub const ERR_CLASSES: [ErrClass; 6] = [
    ErrClass::InvalidDescriptor,
    ErrClass::AddressFault,
    ErrClass::Overlap,
    ErrClass::InvalidAkey,
    ErrClass::InvalidContext,
    ErrClass::RingIndex,
];

/// ERRLOG_HD_ENT.step values used here (which stage failed). AMD's `hw.h` confirms only
/// 1 = INT and 12 = FN_RKEY; the others are this model's numbering.
pub mod step {
    pub const INT: u8 = 1;
    pub const CXT_TABLE: u8 = 2;
    pub const RING: u8 = 3;
    pub const DESCRIPTOR: u8 = 4;
    pub const AKEY: u8 = 5;
    pub const DATA: u8 = 6;
    pub const COMPLETION: u8 = 7;
}

/// ERRLOG_HD_ENT.re: the device's reaction.
pub const RE_INFORM: u8 = 0;
pub const RE_CONTEXT_STOPPED: u8 = 1;

const _: () = assert!(std::mem::size_of::<CxtL2Ent>() == 8);
const _: () = assert!(std::mem::size_of::<CxtL1Ent>() == 32);
const _: () = assert!(std::mem::size_of::<CxtCtl>() == 64);
const _: () = assert!(std::mem::size_of::<CxtSts>() == 16);
const _: () = assert!(std::mem::size_of::<AkeyEnt>() == 16);
const _: () = assert!(std::mem::size_of::<Descriptor>() == 64);
const _: () = assert!(std::mem::size_of::<DscDmabCopy>() == 64);
const _: () = assert!(std::mem::size_of::<DscIntr>() == 64);
const _: () = assert!(std::mem::size_of::<DscCxtStart>() == 64);
const _: () = assert!(std::mem::size_of::<DscSync>() == 64);
const _: () = assert!(std::mem::size_of::<CstBlk>() == 32);
const _: () = assert!(std::mem::size_of::<ErrlogHdEnt>() == 64);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    // Oracle: byte offsets and bit positions from the spec's tables, written out here.
    #[test]
    fn field_offsets_match_spec_tables() {
        assert_eq!(offset_of!(CxtL1Ent, akey_ptr), 8);
        assert_eq!(offset_of!(CxtL1Ent, misc), 16);
        assert_eq!(offset_of!(CxtL1Ent, opb_000_enb), 20);
        assert_eq!(offset_of!(CxtCtl, ds_ring_sz), 0x08);
        assert_eq!(offset_of!(CxtCtl, cxt_sts_ptr), 0x10);
        assert_eq!(offset_of!(CxtCtl, write_index_ptr), 0x18);
        assert_eq!(offset_of!(CxtSts, read_index), 0x08);
        assert_eq!(offset_of!(AkeyEnt, tgt_sfunc), 2);
        assert_eq!(offset_of!(AkeyEnt, pasid), 4);
        assert_eq!(offset_of!(AkeyEnt, stag), 8);
        assert_eq!(offset_of!(AkeyEnt, rkey), 12);
        assert_eq!(offset_of!(DscDmabCopy, size), 4);
        assert_eq!(offset_of!(DscDmabCopy, attr), 8);
        assert_eq!(offset_of!(DscDmabCopy, akey0), 12);
        assert_eq!(offset_of!(DscDmabCopy, akey1), 14);
        assert_eq!(offset_of!(DscDmabCopy, addr0), 16);
        assert_eq!(offset_of!(DscDmabCopy, addr1), 24);
        assert_eq!(offset_of!(DscDmabCopy, csb_ptr), 56);
        assert_eq!(offset_of!(DscIntr, akey), 12);
        assert_eq!(offset_of!(DscCxtStart, vflags), 5);
        assert_eq!(offset_of!(DscCxtStart, vf_num), 6);
        assert_eq!(offset_of!(DscCxtStart, cxt_start), 8);
        assert_eq!(offset_of!(DscCxtStart, cxt_end), 10);
        assert_eq!(offset_of!(DscCxtStart, db_value), 16);
        assert_eq!(offset_of!(DscSync, cflags), 4);
        assert_eq!(offset_of!(DscSync, key_start), 12);
        assert_eq!(offset_of!(DscSync, key_end), 14);
        assert_eq!(offset_of!(CstBlk, flags), 8);
        assert_eq!(offset_of!(ErrlogHdEnt, dsc_index), 8);
        assert_eq!(offset_of!(ErrlogHdEnt, err_class), 44);
        assert_eq!(offset_of!(ErrlogHdEnt, vendor), 48);
    }

    #[test]
    fn descriptor_header_bits() {
        let f = |c: fn(DscHeader) -> DscHeader| !u32::from(c(DscHeader::from(u32::MAX)));
        assert_eq!(f(|h| h.with_vl(false)), 1);
        assert_eq!(f(|h| h.with_se(false)), 1 << 1);
        assert_eq!(f(|h| h.with_fe(false)), 1 << 2);
        assert_eq!(f(|h| h.with_ch(false)), 1 << 3);
        assert_eq!(f(|h| h.with_csr(false)), 1 << 4);
        assert_eq!(f(|h| h.with_rb(false)), 1 << 5);
        assert_eq!(f(|h| h.with_subtype(0)), 0xff << 8);
        assert_eq!(f(|h| h.with_ty(0)), 0x7ff << 16);
    }

    #[test]
    fn errlog_header_bits() {
        let f = |c: fn(ErrlogHdr) -> ErrlogHdr| !u64::from(c(ErrlogHdr::from(u64::MAX)));
        assert_eq!(f(|h| h.with_vl(false)), 1);
        assert_eq!(f(|h| h.with_step(0)), 0x3f << 8);
        assert_eq!(f(|h| h.with_ty(0)), 0x7ff << 16);
        assert_eq!(f(|h| h.with_cv(false)), 1 << 32);
        assert_eq!(f(|h| h.with_div(false)), 1 << 33);
        assert_eq!(f(|h| h.with_bv(false)), 1 << 34);
        assert_eq!(f(|h| h.with_buf(0)), 0b111 << 36);
        assert_eq!(f(|h| h.with_sub_step(0)), 0xf << 40);
        assert_eq!(f(|h| h.with_re(0)), 0b111 << 44);
        assert_eq!(f(|h| h.with_cxt_num(0)), 0xffff << 48);
    }

    #[test]
    fn copy_descriptor_encodes_into_a_poisoned_buffer_without_stray_bits() {
        let mut raw = [0xffu8; 64];
        let d = DscDmabCopy {
            header: Descriptor::header_for(DSC_TYPE_DMAB, DSC_DMAB_COPY, true),
            size: U32::new(4095),
            akey0: U16::new(1),
            akey1: U16::new(2),
            addr0: U64::new(0x1122_3344_5566_7000),
            addr1: U64::new(0x8000),
            csb_ptr: Descriptor::csb_field(Some(0x9020)),
            ..Default::default()
        };
        raw.copy_from_slice(d.as_bytes());
        // dword0: vl (bit 0), fe (bit 2), subtype 3 at [15:8], type 1 at [26:16].
        assert_eq!(&raw[0..4], &[0x05, 0x03, 0x01, 0x00]);
        assert_eq!(&raw[4..8], &4095u32.to_le_bytes());
        assert_eq!(&raw[8..12], &[0, 0, 0, 0]);
        assert_eq!(&raw[12..16], &[1, 0, 2, 0]);
        assert_eq!(&raw[16..24], &0x1122_3344_5566_7000u64.to_le_bytes());
        assert_eq!(&raw[24..32], &0x8000u64.to_le_bytes());
        assert!(raw[32..56].iter().all(|b| *b == 0));
        assert_eq!(&raw[56..64], &0x9020u64.to_le_bytes());
        let g = Descriptor::read_from_bytes(&raw).expect("64 bytes");
        assert_eq!(g.csb(), Some(0x9020));
        assert_eq!(
            (g.header().ty(), g.header().subtype(), g.header().fe()),
            (1, 3, true)
        );
    }

    #[test]
    fn pointers_mask_their_low_bits() {
        let l2 = CxtL2Ent::new(0x12_3456);
        assert_eq!((l2.vl(), l2.ptr()), (true, 0x12_3000));
        let ak = AkeyEnt::new(Some(5), 0);
        assert_eq!(ak.intr.get(), 0b101_0011);
        assert_eq!((ak.vl(), ak.iv(), ak.intr_num()), (true, true, 5));
        assert_eq!(table_indices(130), (1, 2));
        assert_eq!(Descriptor::default().csb(), None);
    }
}
