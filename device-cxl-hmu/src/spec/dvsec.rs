//! The DVSECs that make the function a CXL memory device and locate its registers:
//! - PCIe DVSEC for CXL Devices (CXL 3.2 §8.1.3): Mem_Capable with one HDM range whose base
//!   and size are the guest-physical range the CHMU monitors. This model's choice for
//!   DPA -> HPA translation, documented here in one place: the range is pre-committed, so
//!   **HPA = Range 1 Base + DPA** (no interleave). Guest drivers read Range 1 Base/Size here.
//! - Register Locator DVSEC (CXL 3.2 §8.1.9): the Component Registers (block 1), the Memory
//!   Device registers (block 3) and the CHMU (block 5) in BAR [`REGS_BAR`], each 64 KiB
//!   aligned.
//!
//! Left out: Range 2, the DVSEC's control and lock registers (all read 0), the other CXL
//! DVSECs (Flex Bus port, GPF, ...), a CPMU register block (identifier 4).

use super::regs::*;

/// Bytes of a register block as the Register Locator maps it (§8.1.9: 64 KiB aligned).
pub const REGISTER_BLOCK_SIZE: u64 = 0x10000;

/// DVSEC ID 0 register offsets (from the DVSEC start).
pub const DVSEC_CXL_CAPABILITY: usize = 0x0a;
pub const DVSEC_RANGE1_SIZE_HIGH: usize = 0x18;
pub const DVSEC_RANGE1_SIZE_LOW: usize = 0x1c;
pub const DVSEC_RANGE1_BASE_HIGH: usize = 0x20;
pub const DVSEC_RANGE1_BASE_LOW: usize = 0x24;
pub const DVSEC_CXL_DEVICE_LENGTH: usize = 0x3c;

/// The guest-physical range the device's memory occupies (what the CHMU monitors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemRange {
    pub hpa_base: u64,
    pub size: u64,
}

/// The PCIe DVSEC for CXL Devices' body after its header.
pub fn cxl_device_dvsec_body(range: MemRange) -> Vec<u8> {
    let mut d = vec![0u8; DVSEC_CXL_DEVICE_LENGTH];
    // CXL Capability: IO_Capable (bit 1), Mem_Capable (bit 2), HDM_Count = 1 ([5:4]).
    d[DVSEC_CXL_CAPABILITY..DVSEC_CXL_CAPABILITY + 2].copy_from_slice(&0x0016u16.to_le_bytes());
    let put =
        |d: &mut Vec<u8>, off: usize, v: u32| d[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(&mut d, DVSEC_RANGE1_SIZE_HIGH, (range.size >> 32) as u32);
    // Size low: [31:28] size bits, [1] Memory_Active, [0] Memory_Info_Valid.
    put(
        &mut d,
        DVSEC_RANGE1_SIZE_LOW,
        (range.size as u32 & 0xf000_0000) | 0x3,
    );
    put(
        &mut d,
        DVSEC_RANGE1_BASE_HIGH,
        (range.hpa_base >> 32) as u32,
    );
    put(
        &mut d,
        DVSEC_RANGE1_BASE_LOW,
        range.hpa_base as u32 & 0xf000_0000,
    );
    d.split_off(10)
}

/// Decodes DVSEC 0 Range 1 from raw configuration bytes at `dvsec` (for drivers and tests).
pub fn decode_range1(cfg: &[u8], dvsec: usize) -> Option<MemRange> {
    let rd = |o: usize| -> Option<u32> {
        let b = cfg.get(dvsec + o..dvsec + o + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let size = (u64::from(rd(DVSEC_RANGE1_SIZE_HIGH)?) << 32)
        | u64::from(rd(DVSEC_RANGE1_SIZE_LOW)? & 0xf000_0000);
    let hpa_base = (u64::from(rd(DVSEC_RANGE1_BASE_HIGH)?) << 32)
        | u64::from(rd(DVSEC_RANGE1_BASE_LOW)? & 0xf000_0000);
    Some(MemRange { hpa_base, size })
}

/// The Register Locator's entries: (block identifier, offset in [`REGS_BAR`]).
pub const REGISTER_BLOCKS: [(u8, u64); 3] = [
    (RBI_COMPONENT, COMPONENT_BLOCK_OFFSET),
    (RBI_MEMDEV, MEMDEV_BLOCK_OFFSET),
    (RBI_CHMU, CHMU_BLOCK_OFFSET),
];
const _: () = {
    let mut i = 0;
    while i < REGISTER_BLOCKS.len() {
        assert!(REGISTER_BLOCKS[i].1.is_multiple_of(REGISTER_BLOCK_SIZE));
        i += 1;
    }
    assert!(MEMDEV_BLOCK_OFFSET >= COMPONENT_BLOCK_OFFSET + REGISTER_BLOCK_SIZE);
    assert!(CHMU_BLOCK_OFFSET >= MEMDEV_BLOCK_OFFSET + REGISTER_BLOCK_SIZE);
};

/// The Register Locator DVSEC's body after its header: 2 reserved bytes, then one 8-byte
/// entry per block.
pub fn register_locator_body() -> Vec<u8> {
    let mut d = vec![0u8; 2];
    for (id, off) in REGISTER_BLOCKS {
        let low: u32 = RegLocLow::new()
            .with_bir(REGS_BAR)
            .with_block_id(id)
            .with_offset_hi16((off >> 16) as u16)
            .into();
        d.extend_from_slice(&low.to_le_bytes());
        d.extend_from_slice(&((off >> 32) as u32).to_le_bytes());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_entries_name_each_block_at_its_offset() {
        let b = register_locator_body();
        assert_eq!(b.len(), 2 + 3 * 8);
        let entry =
            |i: usize| u32::from_le_bytes([b[2 + 8 * i], b[3 + 8 * i], b[4 + 8 * i], b[5 + 8 * i]]);
        // Oracle from the spec table: BIR [2:0], block id [15:8], offset bits [31:16].
        assert_eq!(entry(0), 0x0000_0102);
        assert_eq!(entry(1), 0x0001_0302);
        assert_eq!(entry(2), 0x0002_0502);
    }
}
