//! PCI configuration space of an emulated function (PCI Local Bus 3.0 §6, PCIe Base 6.0 §7.5,
//! §7.7.2 MSI-X, §7.9.6 DVSEC).
//!
//! Device-neutral: both device servers of this project (SDXi and the CXL CHMU) build their
//! configuration space with [`ConfigSpaceBuilder`]: the type 0 header with its BARs ([`BarDef`]),
//! the PCI Express capability (§7.5.3), MSI-X (§7.7.2, table and PBA in a BAR: [`MsixDef`]),
//! and extended capabilities (§7.6: DVSECs, §7.9.6, and the Device Serial Number, §7.9.3). It
//! does no I/O. [`dvsecs`] walks the extended capability list of any configuration space, the
//! way a guest driver finds a DVSEC (the guest agent uses it). QEMU's `vfio-user-pci` emulates
//! the BAR registers and the MSI-X table itself; this module still keeps BAR sizing masks
//! correct so that other vfio-user clients see a conforming function.
//!
//! Left out: power management, AER, SR-IOV, MSI, I/O BARs and every capability no device here
//! needs.

use std::fmt;

/// Size of a conventional configuration space.
pub const CONFIG_SPACE_LEGACY: usize = 256;
/// Size of a PCI Express extended configuration space.
pub const CONFIG_SPACE_EXTENDED: usize = 4096;

// Type 0 header offsets (PCI Local Bus 3.0 §6.1).
pub const PCI_VENDOR_ID: usize = 0x00;
pub const PCI_DEVICE_ID: usize = 0x02;
pub const PCI_COMMAND: usize = 0x04;
pub const PCI_STATUS: usize = 0x06;
pub const PCI_REVISION_ID: usize = 0x08;
/// Programming interface, sub-class and base class: the 24-bit class code at 0x09..0x0c.
pub const PCI_CLASS_PROG: usize = 0x09;
pub const PCI_HEADER_TYPE: usize = 0x0e;
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
pub const PCI_SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const PCI_SUBSYSTEM_ID: usize = 0x2e;
pub const PCI_CAPABILITY_LIST: usize = 0x34;
pub const PCI_INTERRUPT_LINE: usize = 0x3c;
pub const PCI_INTERRUPT_PIN: usize = 0x3d;

pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;
pub const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;
pub const PCI_STATUS_CAP_LIST: u16 = 1 << 4;

pub const PCI_CAP_ID_EXP: u8 = 0x10;
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
pub const PCI_EXT_CAP_ID_DVSEC: u16 = 0x0023;
pub const PCI_EXT_CAP_ID_DSN: u16 = 0x0003;

/// Memory BAR type bits (PCI Local Bus 3.0 §6.2.5.1).
pub const PCI_BASE_ADDRESS_MEM_TYPE_64: u32 = 0x4;
pub const PCI_BASE_ADDRESS_MEM_PREFETCH: u32 = 0x8;

/// One memory BAR as the function defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarDef {
    /// BAR number (0..=5); a 64-bit BAR also occupies `index + 1`.
    pub index: u8,
    /// Size in bytes, a power of two, at least 4 KiB so the guest can map it page-wise.
    pub size: u64,
    pub is_64bit: bool,
    pub prefetchable: bool,
}

/// A structural mistake in a configuration space description (a bug in the device model,
/// never something the guest can cause).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR{index}: size {size:#x} is not a power of two of at least 4 KiB")]
    BarSize { index: u8, size: u64 },
    #[error("BAR{index}: index out of range or overlapping another BAR")]
    BarSlot { index: u8 },
    #[error("capability of {len} bytes does not fit at {offset:#x}")]
    NoRoom { offset: usize, len: usize },
    #[error("extended capabilities need a {CONFIG_SPACE_EXTENDED}-byte configuration space")]
    NotExtended,
}

/// The MSI-X capability's placement (PCIe Base 6.0 §7.7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixDef {
    /// Number of vectors (1..=2048).
    pub vectors: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

/// Builds a configuration space: header, standard capability list, extended capability list.
#[derive(Debug)]
pub struct ConfigSpaceBuilder {
    cfg: ConfigSpace,
    next_cap: usize,
    last_cap_next_ptr: usize,
    next_ext_cap: usize,
    last_ext_header: Option<usize>,
    slots_used: [bool; 6],
}

impl ConfigSpaceBuilder {
    /// A type 0 header with the given identity. `size` is [`CONFIG_SPACE_LEGACY`] or
    /// [`CONFIG_SPACE_EXTENDED`].
    pub fn new(vendor: u16, device: u16, class_code: u32, revision: u8, size: usize) -> Self {
        let size = if size >= CONFIG_SPACE_EXTENDED {
            CONFIG_SPACE_EXTENDED
        } else {
            CONFIG_SPACE_LEGACY
        };
        let mut cfg = ConfigSpace {
            bytes: vec![0; size],
            wmask: vec![0; size],
            w1cmask: vec![0; size],
            bars: Vec::new(),
            msix: None,
        };
        cfg.put_u16(PCI_VENDOR_ID, vendor);
        cfg.put_u16(PCI_DEVICE_ID, device);
        cfg.put_u8(PCI_REVISION_ID, revision);
        let class = class_code.to_le_bytes();
        cfg.bytes[PCI_CLASS_PROG..PCI_CLASS_PROG + 3].copy_from_slice(&class[..3]);
        cfg.put_u16(PCI_SUBSYSTEM_VENDOR_ID, vendor);
        cfg.put_u16(PCI_SUBSYSTEM_ID, device);
        let cmd_mask = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
        cfg.wmask[PCI_COMMAND..PCI_COMMAND + 2].copy_from_slice(&cmd_mask.to_le_bytes());
        cfg.wmask[PCI_INTERRUPT_LINE] = 0xff;
        Self {
            cfg,
            next_cap: 0x40,
            last_cap_next_ptr: PCI_CAPABILITY_LIST,
            next_ext_cap: 0x100,
            last_ext_header: None,
            slots_used: [false; 6],
        }
    }

    /// Declares a memory BAR.
    pub fn bar(mut self, bar: BarDef) -> Result<Self, ConfigError> {
        if !bar.size.is_power_of_two() || bar.size < 4096 {
            return Err(ConfigError::BarSize {
                index: bar.index,
                size: bar.size,
            });
        }
        let i = usize::from(bar.index);
        let slots = if bar.is_64bit { 2 } else { 1 };
        if i + slots > 6 || self.slots_used[i..i + slots].iter().any(|u| *u) {
            return Err(ConfigError::BarSlot { index: bar.index });
        }
        self.slots_used[i..i + slots]
            .iter_mut()
            .for_each(|u| *u = true);
        let mut low = 0u32;
        if bar.is_64bit {
            low |= PCI_BASE_ADDRESS_MEM_TYPE_64;
        }
        if bar.prefetchable {
            low |= PCI_BASE_ADDRESS_MEM_PREFETCH;
        }
        let off = PCI_BASE_ADDRESS_0 + 4 * i;
        self.cfg.put_u32(off, low);
        let mask = !(bar.size - 1);
        self.cfg.wmask[off..off + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
        if bar.is_64bit {
            self.cfg.wmask[off + 4..off + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        }
        self.cfg.bars.push(bar);
        Ok(self)
    }

    /// Sets the legacy interrupt pin (1 = INTA).
    pub fn interrupt_pin(mut self, pin: u8) -> Self {
        self.cfg.put_u8(PCI_INTERRUPT_PIN, pin);
        self
    }

    /// Appends a standard capability whose body (after the 2-byte ID/next header) is `body`.
    /// Returns the builder and the capability's offset.
    pub fn capability(
        mut self,
        id: u8,
        body: &[u8],
        wmask: &[u8],
    ) -> Result<(Self, usize), ConfigError> {
        let off = self.next_cap;
        let len = 2 + body.len();
        let end = off + len;
        if end > CONFIG_SPACE_LEGACY {
            return Err(ConfigError::NoRoom { offset: off, len });
        }
        self.cfg.bytes[off] = id;
        self.cfg.bytes[off + 2..end].copy_from_slice(body);
        for (i, m) in wmask.iter().enumerate().take(body.len()) {
            self.cfg.wmask[off + 2 + i] = *m;
        }
        self.cfg.bytes[self.last_cap_next_ptr] = off as u8;
        self.last_cap_next_ptr = off + 1;
        let status = self.cfg.get_u16(PCI_STATUS) | PCI_STATUS_CAP_LIST;
        self.cfg.put_u16(PCI_STATUS, status);
        self.next_cap = (end + 3) & !3;
        Ok((self, off))
    }

    /// Appends a PCI Express capability (version 2) describing an endpoint
    /// (PCIe Base 6.0 §7.5.3). QEMU turns it into an RCiEP on the root bus.
    pub fn pcie_endpoint(self) -> Result<Self, ConfigError> {
        let mut body = [0u8; 0x3a];
        // PCIe Capabilities register: version 2, device/port type 0 (endpoint).
        body[0..2].copy_from_slice(&0x0002u16.to_le_bytes());
        // Device Capabilities: max payload 128 B, FLR capable (bit 28).
        body[2..6].copy_from_slice(&(1u32 << 28).to_le_bytes());
        // Link Capabilities: 2.5 GT/s x1; Link Status: same, negotiated.
        body[0x0a..0x0e].copy_from_slice(&0x0000_0011u32.to_le_bytes());
        body[0x10..0x12].copy_from_slice(&0x0011u16.to_le_bytes());
        // Device Control is writable (error reporting, payload sizes, FLR initiate is WO).
        let mut wmask = [0u8; 0x3a];
        wmask[6] = 0xff;
        wmask[7] = 0xff;
        let (s, _) = self.capability(PCI_CAP_ID_EXP, &body, &wmask)?;
        Ok(s)
    }

    /// Appends the MSI-X capability (PCIe Base 6.0 §7.7.2).
    pub fn msix(self, def: MsixDef) -> Result<Self, ConfigError> {
        let mut body = [0u8; 10];
        let ctrl = def.vectors.saturating_sub(1) & 0x7ff;
        body[0..2].copy_from_slice(&ctrl.to_le_bytes());
        body[2..6]
            .copy_from_slice(&(def.table_offset | u32::from(def.table_bar & 7)).to_le_bytes());
        body[6..10].copy_from_slice(&(def.pba_offset | u32::from(def.pba_bar & 7)).to_le_bytes());
        // Message Control: MSI-X Enable (bit 15) and Function Mask (bit 14) are writable.
        let wmask = [0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0];
        let (mut s, off) = self.capability(PCI_CAP_ID_MSIX, &body, &wmask)?;
        s.cfg.msix = Some((off, def));
        Ok(s)
    }

    /// Appends a Designated Vendor-Specific Extended Capability (PCIe Base 6.0 §7.9.6):
    /// `body` is everything after the 10-byte DVSEC header.
    pub fn dvsec(
        self,
        vendor: u16,
        revision: u8,
        dvsec_id: u16,
        body: &[u8],
    ) -> Result<Self, ConfigError> {
        let mut b = Vec::with_capacity(6 + body.len());
        let len = 10 + body.len() as u32;
        let header1 = u32::from(vendor) | (u32::from(revision & 0xf) << 16) | (len << 20);
        b.extend_from_slice(&header1.to_le_bytes());
        b.extend_from_slice(&dvsec_id.to_le_bytes());
        b.extend_from_slice(body);
        self.extended_capability(PCI_EXT_CAP_ID_DVSEC, &b)
    }

    /// Appends a Device Serial Number Extended Capability (PCIe Base 6.0 §7.9.3).
    pub fn device_serial_number(self, serial: u64) -> Result<Self, ConfigError> {
        self.extended_capability(PCI_EXT_CAP_ID_DSN, &serial.to_le_bytes())
    }

    /// Appends an extended capability, version 1, read-only: `body` follows the 4-byte header.
    fn extended_capability(mut self, id: u16, body: &[u8]) -> Result<Self, ConfigError> {
        if self.cfg.bytes.len() < CONFIG_SPACE_EXTENDED {
            return Err(ConfigError::NotExtended);
        }
        let off = self.next_ext_cap;
        let len = 4 + body.len();
        if off + len > CONFIG_SPACE_EXTENDED {
            return Err(ConfigError::NoRoom { offset: off, len });
        }
        // Extended capability header: ID, version 1, next = 0 (patched when another follows).
        self.cfg.put_u32(off, u32::from(id) | (1 << 16));
        self.cfg.bytes[off + 4..off + len].copy_from_slice(body);
        if let Some(prev) = self.last_ext_header {
            let h = self.cfg.get_u32(prev) | ((off as u32) << 20);
            self.cfg.put_u32(prev, h);
        }
        self.last_ext_header = Some(off);
        self.next_ext_cap = (off + len + 3) & !3;
        Ok(self)
    }

    pub fn build(self) -> ConfigSpace {
        self.cfg
    }
}

/// A function's configuration space with its write masks.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
    wmask: Vec<u8>,
    w1cmask: Vec<u8>,
    bars: Vec<BarDef>,
    msix: Option<(usize, MsixDef)>,
}

impl fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("size", &self.bytes.len())
            .field("bars", &self.bars)
            .field("msix", &self.msix)
            .finish()
    }
}

impl ConfigSpace {
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    pub fn bars(&self) -> &[BarDef] {
        &self.bars
    }

    pub fn bar(&self, index: u8) -> Option<&BarDef> {
        self.bars.iter().find(|b| b.index == index)
    }

    pub fn msix(&self) -> Option<MsixDef> {
        self.msix.map(|(_, d)| d)
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end read as 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes through the write masks; read-only bits keep their value, writes past the end
    /// are dropped. Returns true when the Command register changed.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let before = self.command();
        for (i, v) in data.iter().enumerate() {
            let Some(o) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) else {
                continue;
            };
            if o >= self.bytes.len() {
                continue;
            }
            let (w, c) = (self.wmask[o], self.w1cmask[o]);
            self.bytes[o] = (self.bytes[o] & !w) | (v & w);
            self.bytes[o] &= !(v & c);
        }
        before != self.command()
    }

    pub fn command(&self) -> u16 {
        self.get_u16(PCI_COMMAND)
    }

    /// Bus Master Enable: while clear the function must not DMA nor signal MSI/MSI-X.
    pub fn bus_master(&self) -> bool {
        self.command() & PCI_COMMAND_MASTER != 0
    }

    /// Restores the Command register and the writable bits of capabilities to their reset
    /// value (function-level reset); identity fields are read-only and unchanged.
    pub fn reset(&mut self, pristine: &ConfigSpace) {
        *self = pristine.clone();
    }

    pub fn get_u8(&self, off: usize) -> u8 {
        self.bytes.get(off).copied().unwrap_or(0)
    }

    pub fn get_u16(&self, off: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(off as u64, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(off as u64, &mut b);
        u32::from_le_bytes(b)
    }

    fn put_u8(&mut self, off: usize, v: u8) {
        self.bytes[off] = v;
    }

    fn put_u16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// Walks a standard capability list in raw configuration bytes (used by guest drivers and
/// tests): returns `(id, offset)` pairs, stopping at loops or out-of-range pointers.
pub fn capabilities(cfg: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut ptr = cfg.get(PCI_CAPABILITY_LIST).copied().unwrap_or(0) as usize & !3;
    while ptr >= 0x40 && ptr + 1 < cfg.len().min(CONFIG_SPACE_LEGACY) && out.len() < 48 {
        out.push((cfg[ptr], ptr));
        ptr = cfg[ptr + 1] as usize & !3;
    }
    out
}

/// One DVSEC found in extended configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dvsec {
    pub offset: usize,
    pub vendor: u16,
    pub revision: u8,
    pub length: usize,
    pub id: u16,
}

/// Walks the extended capability list in raw configuration bytes and returns its DVSECs.
pub fn dvsecs(cfg: &[u8]) -> Vec<Dvsec> {
    let rd32 = |o: usize| -> u32 {
        cfg.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    let mut off = 0x100usize;
    for _ in 0..64 {
        if off < 0x100 || off + 10 > cfg.len() {
            break;
        }
        let h = rd32(off);
        if h == 0 || h == 0xffff_ffff {
            break;
        }
        if (h & 0xffff) as u16 == PCI_EXT_CAP_ID_DVSEC {
            let h1 = rd32(off + 4);
            out.push(Dvsec {
                offset: off,
                vendor: (h1 & 0xffff) as u16,
                revision: ((h1 >> 16) & 0xf) as u8,
                length: (h1 >> 20) as usize,
                id: (rd32(off + 8) & 0xffff) as u16,
            });
        }
        off = (h >> 20) as usize & !3;
        if off == 0 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConfigSpace {
        ConfigSpaceBuilder::new(0x1b36, 0x0123, 0x12_01_00, 1, CONFIG_SPACE_EXTENDED)
            .bar(BarDef {
                index: 0,
                size: 0x40000,
                is_64bit: true,
                prefetchable: false,
            })
            .and_then(|b| {
                b.msix(MsixDef {
                    vectors: 5,
                    table_bar: 4,
                    table_offset: 0,
                    pba_bar: 4,
                    pba_offset: 0x800,
                })
            })
            .and_then(|b| b.pcie_endpoint())
            .and_then(|b| b.dvsec(0x1e98, 0, 0, &[0; 0x2e]))
            .and_then(|b| b.dvsec(0x1e98, 0, 8, &[0; 0x12]))
            .expect("valid description")
            .build()
    }

    #[test]
    fn header_identity_at_spec_offsets() {
        let c = sample();
        let mut raw = [0u8; 64];
        c.read(0, &mut raw);
        assert_eq!(&raw[0..4], &[0x36, 0x1b, 0x23, 0x01]);
        // Class code bytes 0x09 (prog-if), 0x0a (sub-class), 0x0b (base class).
        assert_eq!(&raw[9..12], &[0x00, 0x01, 0x12]);
        assert_eq!(raw[0x10] & 0x7, 0x4, "64-bit memory BAR type");
    }

    #[test]
    fn bar_sizing_reads_back_size_mask() {
        let mut c = sample();
        c.write(0x10, &0xffff_ffffu32.to_le_bytes());
        c.write(0x14, &0xffff_ffffu32.to_le_bytes());
        let low = c.get_u32(0x10);
        let high = c.get_u32(0x14);
        let size = !((u64::from(high) << 32) | u64::from(low & !0xf)) + 1;
        assert_eq!(size, 0x40000);
    }

    #[test]
    fn read_only_identity_ignores_writes() {
        let mut c = sample();
        c.write(0, &[0xff; 4]);
        assert_eq!(c.get_u16(0), 0x1b36);
    }

    #[test]
    fn command_bus_master_is_writable_and_reported() {
        let mut c = sample();
        assert!(!c.bus_master());
        assert!(c.write(4, &[0x06, 0x00]));
        assert!(c.bus_master());
    }

    #[test]
    fn capability_list_walks_msix_then_pcie() {
        let c = sample();
        let mut raw = vec![0u8; c.size()];
        c.read(0, &mut raw);
        let ids: Vec<u8> = capabilities(&raw).iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![PCI_CAP_ID_MSIX, PCI_CAP_ID_EXP]);
        let (_, off) = capabilities(&raw)[0];
        // Table size field is N-1.
        assert_eq!(u16::from_le_bytes([raw[off + 2], raw[off + 3]]) & 0x7ff, 4);
        assert_eq!(
            u32::from_le_bytes([raw[off + 8], raw[off + 9], raw[off + 10], raw[off + 11]]),
            0x804
        );
    }

    #[test]
    fn dvsec_chain_is_linked_and_decodable() {
        let c = sample();
        let mut raw = vec![0u8; c.size()];
        c.read(0, &mut raw);
        let d = dvsecs(&raw);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].offset, d[0].vendor, d[0].id, d[0].length),
            (0x100, 0x1e98, 0, 0x38)
        );
        assert_eq!((d[1].vendor, d[1].id, d[1].length), (0x1e98, 8, 0x1c));
        assert_eq!(d[1].offset, 0x138);
    }

    #[test]
    fn overlapping_bars_are_rejected() {
        let r = ConfigSpaceBuilder::new(1, 2, 3, 0, CONFIG_SPACE_LEGACY)
            .bar(BarDef {
                index: 0,
                size: 4096,
                is_64bit: true,
                prefetchable: false,
            })
            .and_then(|b| {
                b.bar(BarDef {
                    index: 1,
                    size: 4096,
                    is_64bit: false,
                    prefetchable: false,
                })
            });
        assert_eq!(r.err(), Some(ConfigError::BarSlot { index: 1 }));
    }

    #[test]
    fn out_of_range_access_reads_zero_and_drops_writes() {
        let mut c = sample();
        let mut b = [0xaau8; 4];
        c.read(4094, &mut b);
        assert_eq!(b, [0, 0, 0, 0]);
        c.write(u64::MAX - 1, &[1, 2, 3]);
    }
}
