//! The row type of the register tables of the CXL register blocks this device adds in front
//! of the CHMU: the Component Registers ([`super::component`]) and the Memory Device registers
//! ([`super::memdev`]). Same columns as the CHMU's table (`super::chmu_table`): offset, name,
//! width, reset value, writable mask, write-1-to-clear mask, post-write hook.

use crate::spec::dvsec::MemRange;

/// Where a register's reset value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    Value(u64),
    /// A dword of the device's memory range, as the HDM decoder reports it (§8.2.4.20):
    /// base or size, low dword (bits \[31:28\] only) or high dword.
    Range {
        size: bool,
        high: bool,
    },
}

impl Reset {
    pub fn value(self, range: &MemRange) -> u64 {
        match self {
            Reset::Value(v) => v,
            Reset::Range { size, high } => {
                let v = if size { range.size } else { range.hpa_base };
                if high {
                    v >> 32
                } else {
                    v & 0xf000_0000
                }
            }
        }
    }
}

/// What a host write to a register sets off, after the bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostWrite {
    None,
    /// Mailbox Control with Doorbell set: run the command (§8.2.9.4.4).
    Doorbell,
}

/// One register of a block's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockReg {
    /// Offset in the block.
    pub offset: u64,
    pub name: &'static str,
    /// Bytes (4 or 8).
    pub width: u8,
    pub reset: Reset,
    /// Bits the host may write.
    pub wmask: u64,
    /// Bits the host clears by writing 1.
    pub w1c: u64,
    pub post_write: PostWrite,
}

/// A read-only register of `width` bytes.
pub const fn ro(offset: u64, name: &'static str, width: u8, reset: u64) -> BlockReg {
    BlockReg {
        offset,
        name,
        width,
        reset: Reset::Value(reset),
        wmask: 0,
        w1c: 0,
        post_write: PostWrite::None,
    }
}

/// A register of `width` bytes, reset to 0, with writable bits `wmask`.
pub const fn rw(offset: u64, name: &'static str, width: u8, wmask: u64) -> BlockReg {
    BlockReg {
        wmask,
        ..ro(offset, name, width, 0)
    }
}

/// Test helper: offsets sorted, rows naturally aligned and disjoint, masks inside the width.
#[cfg(test)]
pub fn assert_well_formed(table: &[BlockReg]) {
    for w in table.windows(2) {
        assert!(w[0].offset + u64::from(w[0].width) <= w[1].offset, "{w:?}");
    }
    for r in table {
        assert!(matches!(r.width, 4 | 8), "{}", r.name);
        assert!(r.offset.is_multiple_of(u64::from(r.width)), "{}", r.name);
        let bits = u64::MAX >> (64 - 8 * u32::from(r.width));
        assert_eq!((r.wmask | r.w1c) & !bits, 0, "{}", r.name);
    }
}
