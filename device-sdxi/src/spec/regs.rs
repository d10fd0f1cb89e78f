//! SDXi 1.0 BAR0 control registers (SNIA SDXi 1.0 §9.2, "MMIO register map"), as used by the
//! Linux SDXi driver (AMD, v3, June 2026: `drivers/dma/sdxi/mmio.h`, `hw.h`).
//!
//! One definition shared by the device model and the guest driver. Every register is 64 bits;
//! offsets, names and field positions follow the spec tables (SDXi 1.0 §9.2, as AMD's
//! `drivers/dma/sdxi/mmio.h` defines them).
//! Left out: MMIO_GRP_ENUM (only in the 2022 prototype; reads 0 here like any unlisted offset).

use bitfield_struct::bitfield;

/// SDXi PCI class code: Processing Accelerator (0x12), SDXi (0x01), prog-if 0.
pub const SDXI_CLASS_CODE: u32 = 0x12_01_00;
/// Vendor ID used by this emulator (Red Hat's QEMU range, as QEMU's own emulated devices use).
pub const EMU_VENDOR_ID: u16 = 0x1b36;
/// Device ID of the emulated SDXi function (unassigned in QEMU's list).
pub const EMU_DEVICE_ID: u16 = 0x5d10;

/// BAR holding the control registers (64-bit memory BAR).
pub const CONTROL_BAR: u8 = 0;
/// Size of BAR0: the highest register is ERR_RD at 0x20028, so 256 KiB.
pub const CONTROL_BAR_SIZE: u64 = 0x40000;
/// BAR holding the per-context doorbells.
pub const DOORBELL_BAR: u8 = 2;
/// BAR holding the MSI-X table and PBA.
pub const MSIX_BAR: u8 = 4;
pub const MSIX_TABLE_OFFSET: u32 = 0;
pub const MSIX_PBA_OFFSET: u32 = 0x800;

pub const MMIO_CTL0: u64 = 0x00000;
pub const MMIO_CTL2: u64 = 0x00010;
pub const MMIO_STS0: u64 = 0x00100;
pub const MMIO_CAP0: u64 = 0x00200;
pub const MMIO_CAP1: u64 = 0x00208;
pub const MMIO_VERSION: u64 = 0x00210;
pub const MMIO_CXT_L2: u64 = 0x10000;
pub const MMIO_RKEY: u64 = 0x10100;
pub const MMIO_ERR_CTL: u64 = 0x20000;
pub const MMIO_ERR_STS: u64 = 0x20008;
pub const MMIO_ERR_CFG: u64 = 0x20010;
pub const MMIO_ERR_WRT: u64 = 0x20020;
pub const MMIO_ERR_RD: u64 = 0x20028;

/// MMIO_CTL0: function control.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Ctl0 {
    /// Requested function state (GSR).
    #[bits(2)]
    pub fn_gsr: u8,
    pub fn_pasid_vl: bool,
    #[bits(1)]
    __: u8,
    pub fn_err_intr_en: bool,
    #[bits(3)]
    __: u8,
    #[bits(20)]
    pub fn_pasid: u32,
    #[bits(4)]
    __: u8,
    pub fn_grp_id: u32,
}

/// MMIO_CTL2: limits software will use (copied from CAP1).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Ctl2 {
    #[bits(4)]
    pub max_buffer: u8,
    #[bits(8)]
    __: u8,
    #[bits(4)]
    pub max_akey_sz: u8,
    pub max_cxt: u16,
    pub opb_000_avl: u32,
}

/// MMIO_STS0: function status.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Sts0 {
    /// Current function state (GSV).
    #[bits(3)]
    pub fn_gsv: u8,
    #[bits(61)]
    __: u64,
}

/// MMIO_CAP0.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Cap0 {
    pub sfunc: u16,
    #[bits(4)]
    __: u8,
    /// Doorbell stride: 4 KiB << db_stride.
    #[bits(3)]
    pub db_stride: u8,
    #[bits(1)]
    __: u8,
    /// Largest descriptor ring: 1024 << max_ds_ring_sz entries.
    #[bits(5)]
    pub max_ds_ring_sz: u8,
    #[bits(35)]
    __: u64,
}

/// MMIO_CAP1.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Cap1 {
    #[bits(4)]
    pub max_buffer: u8,
    pub rkey_cap: bool,
    pub rm: bool,
    pub mmio64: bool,
    #[bits(1)]
    __: u8,
    #[bits(4)]
    pub max_errlog_sz: u8,
    #[bits(4)]
    pub max_akey_sz: u8,
    /// Highest context ID supported.
    pub max_cxt: u16,
    pub opb_000_cap: u32,
}

/// MMIO_VERSION.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Version {
    pub minor: u8,
    #[bits(8)]
    __: u8,
    pub major: u8,
    #[bits(40)]
    __: u64,
}

/// MMIO_CXT_L2: level-2 context table pointer.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct CxtL2 {
    #[bits(12)]
    __: u16,
    #[bits(52)]
    pub ptr: u64,
}

/// MMIO_RKEY: RKey table.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Rkey {
    pub en: bool,
    #[bits(4)]
    pub sz: u8,
    #[bits(7)]
    __: u8,
    #[bits(52)]
    pub ptr: u64,
}

/// MMIO_ERR_CTL.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ErrCtl {
    pub en: bool,
    #[bits(63)]
    __: u64,
}

/// MMIO_ERR_STS (RW1C).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ErrSts {
    pub sts: bool,
    pub ovf: bool,
    #[bits(1)]
    __: u8,
    pub err: bool,
    #[bits(60)]
    __: u64,
}

/// MMIO_ERR_CFG.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ErrCfg {
    pub en: bool,
    #[bits(5)]
    pub sz: u8,
    #[bits(6)]
    __: u8,
    #[bits(52)]
    pub ptr: u64,
}

/// Function state as reported in STS0.fn_gsv (SDXi 1.0 §3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum FnState {
    #[default]
    Stop = 0,
    Init = 1,
    Active = 2,
    StopgSf = 3,
    StopgHd = 4,
    Error = 5,
}

impl FnState {
    pub fn from_gsv(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Stop,
            1 => Self::Init,
            2 => Self::Active,
            3 => Self::StopgSf,
            4 => Self::StopgHd,
            5 => Self::Error,
            _ => return None,
        })
    }
}

/// Function state request written to CTL0.fn_gsr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FnRequest {
    Reset = 0,
    StopSf = 1,
    StopHd = 2,
    Active = 3,
}

impl FnRequest {
    pub fn from_gsr(v: u8) -> Self {
        match v & 3 {
            0 => Self::Reset,
            1 => Self::StopSf,
            2 => Self::StopHd,
            _ => Self::Active,
        }
    }
}

/// Capabilities of an emulated function, fixed at creation: the source of CAP0, CAP1 and
/// VERSION's reset values and of the BAR sizes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SdxiConfig {
    /// Highest context ID (CAP1.max_cxt); context 0 is the admin context, so the default
    /// offers 64 data contexts.
    pub max_cxt: u16,
    /// Doorbell stride exponent: stride = 4 KiB << db_stride.
    pub db_stride: u8,
    /// Largest ring: 1024 << max_ds_ring_sz descriptors.
    pub max_ds_ring_sz: u8,
    /// CAP1.max_buffer; 11 is read by the driver as 4 GiB.
    pub max_buffer: u8,
    pub max_akey_sz: u8,
    pub max_errlog_sz: u8,
    /// Operation group 000 capability bitmap.
    pub opb_000_cap: u32,
}

impl Default for SdxiConfig {
    fn default() -> Self {
        Self {
            max_cxt: 64,
            db_stride: 0,
            max_ds_ring_sz: 4,
            max_buffer: 11,
            max_akey_sz: 0,
            max_errlog_sz: 0,
            // DMAB, admin and interrupt groups.
            opb_000_cap: 0b1_0111,
        }
    }
}

impl SdxiConfig {
    pub fn cap0(&self) -> u64 {
        Cap0::new()
            .with_sfunc(0)
            .with_db_stride(self.db_stride)
            .with_max_ds_ring_sz(self.max_ds_ring_sz)
            .into()
    }

    pub fn cap1(&self) -> u64 {
        Cap1::new()
            .with_max_buffer(self.max_buffer)
            .with_mmio64(true)
            .with_max_errlog_sz(self.max_errlog_sz)
            .with_max_akey_sz(self.max_akey_sz)
            .with_max_cxt(self.max_cxt)
            .with_opb_000_cap(self.opb_000_cap)
            .into()
    }

    pub fn version(&self) -> u64 {
        Version::new().with_major(1).with_minor(0).into()
    }

    /// Doorbell stride in bytes.
    pub fn doorbell_stride(&self) -> u64 {
        4096u64 << self.db_stride
    }

    /// BAR2 size: one doorbell page per context, rounded up to a power of two.
    pub fn doorbell_bar_size(&self) -> u64 {
        (u64::from(self.max_cxt) + 1)
            .saturating_mul(self.doorbell_stride())
            .next_power_of_two()
    }

    /// MSI-X vectors: vector 0 for the error log, one per context after it.
    pub fn msix_vectors(&self) -> u16 {
        self.max_cxt.saturating_add(2).min(2048)
    }
}

/// A register's value after a function reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    Zero,
    /// The capability words, from [`SdxiConfig`].
    Cap0,
    Cap1,
    Version,
}

impl Reset {
    pub fn value(self, cfg: &SdxiConfig) -> u64 {
        match self {
            Self::Zero => 0,
            Self::Cap0 => cfg.cap0(),
            Self::Cap1 => cfg.cap1(),
            Self::Version => cfg.version(),
        }
    }
}

/// What the function does after software wrote a register (the named side effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostWrite {
    /// CTL0.fn_gsr written: a function state request (SDXi 1.0 §3.2).
    FnStateRequest,
}

/// How each register behaves on access: one row per register of SDXi 1.0 §9.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegInfo {
    pub offset: u64,
    pub name: &'static str,
    pub reset: Reset,
    /// Bits software may write.
    pub wmask: u64,
    /// Bits cleared by writing 1.
    pub w1c: u64,
    pub post_write: Option<PostWrite>,
}

/// The register table, in spec order: offset, name, reset value, writable mask, W1C mask,
/// post-write hook. Registers the function itself updates (STS0.fn_gsv, ERR_WRT) are
/// read-only to software here.
#[rustfmt::skip]
pub const REGISTERS: &[RegInfo] = &[
    reg(MMIO_CTL0,    "MMIO_CTL0",    Reset::Zero,    0xffff_ffff_0fff_ff17, 0,   Some(PostWrite::FnStateRequest)),
    reg(MMIO_CTL2,    "MMIO_CTL2",    Reset::Zero,    0xffff_ffff_ffff_f00f, 0,   None),
    reg(MMIO_STS0,    "MMIO_STS0",    Reset::Zero,    0,                     0,   None),
    reg(MMIO_CAP0,    "MMIO_CAP0",    Reset::Cap0,    0,                     0,   None),
    reg(MMIO_CAP1,    "MMIO_CAP1",    Reset::Cap1,    0,                     0,   None),
    reg(MMIO_VERSION, "MMIO_VERSION", Reset::Version, 0,                     0,   None),
    reg(MMIO_CXT_L2,  "MMIO_CXT_L2",  Reset::Zero,    !0xfff,                0,   None),
    reg(MMIO_RKEY,    "MMIO_RKEY",    Reset::Zero,    !0xfe0,                0,   None),
    reg(MMIO_ERR_CTL, "MMIO_ERR_CTL", Reset::Zero,    0x1,                   0,   None),
    reg(MMIO_ERR_STS, "MMIO_ERR_STS", Reset::Zero,    0,                     0xb, None),
    reg(MMIO_ERR_CFG, "MMIO_ERR_CFG", Reset::Zero,    !0xfc0,                0,   None),
    reg(MMIO_ERR_WRT, "MMIO_ERR_WRT", Reset::Zero,    0,                     0,   None),
    reg(MMIO_ERR_RD,  "MMIO_ERR_RD",  Reset::Zero,    !0,                    0,   None),
];

const fn reg(
    offset: u64,
    name: &'static str,
    reset: Reset,
    wmask: u64,
    w1c: u64,
    post_write: Option<PostWrite>,
) -> RegInfo {
    RegInfo {
        offset,
        name,
        reset,
        wmask,
        w1c,
        post_write,
    }
}

/// Finds the register containing `offset` (which may point at its upper dword).
pub fn lookup(offset: u64) -> Option<(usize, &'static RegInfo)> {
    let base = offset & !7;
    REGISTERS.iter().enumerate().find(|(_, r)| r.offset == base)
}

/// The value of a software write of `data` at `offset` (4 or 8 bytes, already checked) to a
/// register holding `old`: writable bits replaced, W1C bits cleared where 1 was written, the
/// other half of the register kept on a 4-byte write.
pub fn apply_write(info: &RegInfo, old: u64, offset: u64, data: &[u8]) -> u64 {
    let shift = (offset & 7) * 8;
    let lane: u64 = if data.len() == 8 {
        u64::MAX
    } else {
        0xffff_ffff << shift
    };
    let mut raw = [0u8; 8];
    let n = data.len().min(8);
    raw[..n].copy_from_slice(&data[..n]);
    let value = u64::from_le_bytes(raw) << shift;
    let wmask = info.wmask & lane;
    let w1c = info.w1c & lane;
    ((old & !wmask) | (value & wmask)) & !(value & w1c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets the field through the generated setter on an all-ones word and returns which bits
    /// the setter cleared: the oracle for its position.
    fn field_bits(clear: impl Fn(u64) -> u64) -> u64 {
        !clear(u64::MAX)
    }

    // Oracle: bit positions written out from the spec tables (SDXi 1.0 §9.2), not from the code.
    #[test]
    fn ctl0_fields_at_spec_positions() {
        assert_eq!(field_bits(|w| Ctl0::from(w).with_fn_gsr(0).into()), 0b11);
        assert_eq!(
            field_bits(|w| Ctl0::from(w).with_fn_pasid_vl(false).into()),
            1 << 2
        );
        assert_eq!(
            field_bits(|w| Ctl0::from(w).with_fn_err_intr_en(false).into()),
            1 << 4
        );
        assert_eq!(
            field_bits(|w| Ctl0::from(w).with_fn_pasid(0).into()),
            0x0fff_ff00
        );
        assert_eq!(
            field_bits(|w| Ctl0::from(w).with_fn_grp_id(0).into()),
            0xffff_ffff << 32
        );
    }

    #[test]
    fn ctl2_fields_at_spec_positions() {
        assert_eq!(field_bits(|w| Ctl2::from(w).with_max_buffer(0).into()), 0xf);
        assert_eq!(
            field_bits(|w| Ctl2::from(w).with_max_akey_sz(0).into()),
            0xf000
        );
        assert_eq!(
            field_bits(|w| Ctl2::from(w).with_max_cxt(0).into()),
            0xffff_0000
        );
        assert_eq!(
            field_bits(|w| Ctl2::from(w).with_opb_000_avl(0).into()),
            0xffff_ffff << 32
        );
    }

    #[test]
    fn status_and_capability_fields_at_spec_positions() {
        assert_eq!(field_bits(|w| Sts0::from(w).with_fn_gsv(0).into()), 0b111);
        assert_eq!(field_bits(|w| Cap0::from(w).with_sfunc(0).into()), 0xffff);
        assert_eq!(
            field_bits(|w| Cap0::from(w).with_db_stride(0).into()),
            0b111 << 20
        );
        assert_eq!(
            field_bits(|w| Cap0::from(w).with_max_ds_ring_sz(0).into()),
            0x1f << 24
        );
        assert_eq!(field_bits(|w| Cap1::from(w).with_max_buffer(0).into()), 0xf);
        assert_eq!(
            field_bits(|w| Cap1::from(w).with_rkey_cap(false).into()),
            1 << 4
        );
        assert_eq!(field_bits(|w| Cap1::from(w).with_rm(false).into()), 1 << 5);
        assert_eq!(
            field_bits(|w| Cap1::from(w).with_mmio64(false).into()),
            1 << 6
        );
        assert_eq!(
            field_bits(|w| Cap1::from(w).with_max_errlog_sz(0).into()),
            0xf00
        );
        assert_eq!(
            field_bits(|w| Cap1::from(w).with_max_akey_sz(0).into()),
            0xf000
        );
        assert_eq!(
            field_bits(|w| Cap1::from(w).with_max_cxt(0).into()),
            0xffff_0000
        );
        assert_eq!(
            field_bits(|w| Cap1::from(w).with_opb_000_cap(0).into()),
            0xffff_ffff << 32
        );
        assert_eq!(field_bits(|w| Version::from(w).with_minor(0).into()), 0xff);
        assert_eq!(
            field_bits(|w| Version::from(w).with_major(0).into()),
            0xff << 16
        );
    }

    #[test]
    fn table_and_error_log_fields_at_spec_positions() {
        assert_eq!(field_bits(|w| CxtL2::from(w).with_ptr(0).into()), !0xfff);
        assert_eq!(field_bits(|w| Rkey::from(w).with_en(false).into()), 1);
        assert_eq!(field_bits(|w| Rkey::from(w).with_sz(0).into()), 0b1_1110);
        assert_eq!(field_bits(|w| Rkey::from(w).with_ptr(0).into()), !0xfff);
        assert_eq!(field_bits(|w| ErrCtl::from(w).with_en(false).into()), 1);
        assert_eq!(field_bits(|w| ErrSts::from(w).with_sts(false).into()), 1);
        assert_eq!(field_bits(|w| ErrSts::from(w).with_ovf(false).into()), 2);
        assert_eq!(field_bits(|w| ErrSts::from(w).with_err(false).into()), 8);
        assert_eq!(field_bits(|w| ErrCfg::from(w).with_en(false).into()), 1);
        assert_eq!(field_bits(|w| ErrCfg::from(w).with_sz(0).into()), 0b11_1110);
        assert_eq!(field_bits(|w| ErrCfg::from(w).with_ptr(0).into()), !0xfff);
    }

    #[test]
    fn register_offsets_match_spec_and_are_sorted_aligned_unique() {
        let expected: [(u64, &str); 13] = [
            (0x00000, "MMIO_CTL0"),
            (0x00010, "MMIO_CTL2"),
            (0x00100, "MMIO_STS0"),
            (0x00200, "MMIO_CAP0"),
            (0x00208, "MMIO_CAP1"),
            (0x00210, "MMIO_VERSION"),
            (0x10000, "MMIO_CXT_L2"),
            (0x10100, "MMIO_RKEY"),
            (0x20000, "MMIO_ERR_CTL"),
            (0x20008, "MMIO_ERR_STS"),
            (0x20010, "MMIO_ERR_CFG"),
            (0x20020, "MMIO_ERR_WRT"),
            (0x20028, "MMIO_ERR_RD"),
        ];
        let got: Vec<(u64, &str)> = REGISTERS.iter().map(|r| (r.offset, r.name)).collect();
        assert_eq!(got, expected);
        for w in REGISTERS.windows(2) {
            assert!(w[0].offset < w[1].offset);
        }
        assert!(REGISTERS
            .iter()
            .all(|r| r.offset % 8 == 0 && r.offset < CONTROL_BAR_SIZE));
    }

    #[test]
    fn writable_masks_exclude_reserved_bits() {
        // CTL0 reserved: bit 3, bits 7:5, bits 31:28.
        let ctl0 = lookup(MMIO_CTL0).map(|(_, r)| r.wmask);
        assert_eq!(ctl0, Some(!((1 << 3) | (0b111 << 5) | (0xf << 28))));
        let ctl2 = lookup(MMIO_CTL2).map(|(_, r)| r.wmask);
        assert_eq!(ctl2, Some(!(0xff << 4)));
        assert_eq!(lookup(MMIO_ERR_STS).map(|(_, r)| r.w1c), Some(0b1011));
        assert_eq!(lookup(MMIO_ERR_CFG).map(|(_, r)| r.wmask), Some(!0xfc0));
    }

    #[test]
    fn reset_values_and_hooks_come_from_the_table() {
        let cfg = SdxiConfig::default();
        let reset = |off| lookup(off).map(|(_, r)| r.reset.value(&cfg));
        assert_eq!(reset(MMIO_VERSION), Some(0x0001_0000));
        assert_eq!(reset(MMIO_CAP1), Some(cfg.cap1()));
        assert_eq!(reset(MMIO_CXT_L2), Some(0));
        let hooked: Vec<&str> = REGISTERS
            .iter()
            .filter(|r| r.post_write.is_some())
            .map(|r| r.name)
            .collect();
        assert_eq!(hooked, ["MMIO_CTL0"]);
    }

    #[test]
    fn a_write_keeps_read_only_bits_and_clears_w1c_bits() {
        let sts = lookup(MMIO_ERR_STS).map(|(_, r)| *r).expect("ERR_STS");
        assert_eq!(
            apply_write(&sts, 0b1011, MMIO_ERR_STS, &1u64.to_le_bytes()),
            0b1010
        );
        let rd = lookup(MMIO_ERR_RD).map(|(_, r)| *r).expect("ERR_RD");
        let old = 0x1111_2222_3333_4444;
        let hi = apply_write(&rd, old, MMIO_ERR_RD + 4, &0xaaaa_bbbbu32.to_le_bytes());
        assert_eq!(hi, 0xaaaa_bbbb_3333_4444);
    }

    #[test]
    fn lookup_finds_upper_dword_and_rejects_holes() {
        assert_eq!(
            lookup(MMIO_CAP1 + 4).map(|(_, r)| r.name),
            Some("MMIO_CAP1")
        );
        assert!(lookup(0x8).is_none());
        assert!(lookup(0x30000).is_none());
    }
}
