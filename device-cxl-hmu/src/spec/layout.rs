//! Where the CHMU's registers and hotlists lie in the register block (CXL 3.2 §8.2.8): the
//! common capability at 00h, instance i at 10h + CHMU Instance Length x i, its range bitmap and
//! hotlist at the instance-relative offsets its CAP2 and CAP3 report, everything inside the
//! block the Register Locator names.
//!
//! Three placements of the hotlists:
//! - **paged** (default): CAP3 = FF0h and a page-multiple instance length, so every hotlist
//!   starts on a page boundary inside its own instance (instance 0 starts at block + 10h) and
//!   the server can map it straight into the guest; the pages after the hotlist up to the next
//!   instance are the instance's reserved padding. Fits up to 7 instances in the 64 KiB block;
//! - **compact**: CAP3 = 270h right after a 512-byte bitmap, instances 64-byte multiples
//!   (QEMU's RFC layout); spec-exact too, but hotlists are not page aligned, so every read is a
//!   trapped message. Used when paged instances do not fit;
//! - **window** (option, outside the spec): CAP3 points past the block, at a 4 KiB-aligned
//!   stride per instance in a window after it.
//!
//! Also the capabilities this device advertises ([`ChmuConfig`]: CAP0 and CAP1 values, §8.2.8.2)
//! and the epoch scale table of CFG1 (§8.2.8.3: 1 = 100 us ... 5 = 1 s).

use crate::spec::regs::*;
use serde::Serialize;

/// Capabilities of the emulated CHMU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChmuConfig {
    pub instances: u8,
    pub hotlist_size: u16,
    pub counter_width: u8,
    /// CAP1 unit-size bitmap: bit N = 2^(N+8) bytes.
    pub unit_sizes: u32,
    /// CAP1 down-sampling bitmap: bit N = factor 2^N.
    pub downsampling: u16,
    /// MSI-X vector of every instance.
    pub msix_vector: u8,
    /// Hotlists in a window at this offset of the registers' BAR, past the register block
    /// (outside the spec; see the module doc). None: hotlists inside their instances.
    pub hotlist_window: Option<u64>,
    /// Bytes of device memory: the range bitmap has one writable bit per 256 MiB of it, the
    /// rest is reserved (§8.2.8.7).
    pub capacity: u64,
}

impl Default for ChmuConfig {
    fn default() -> Self {
        Self {
            instances: 2,
            hotlist_size: 1024,
            counter_width: 16,
            // 256 B .. 2 GiB.
            unit_sizes: 0x00ff_ffff,
            // 1, 2, 4, ... 32768.
            downsampling: 0xffff,
            msix_vector: 0,
            hotlist_window: None,
            capacity: CHMU_RANGE_BITMAP_BYTES * 8 * CHMU_RANGE_UNIT,
        }
    }
}

/// Where the hotlists are (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Paged,
    Compact,
    Window(u64),
}

/// Epochs this model accepts, as CAP0 advertises them: 100 us x 1 to 1 s x 100.
pub const EPOCH_MIN: (u8, u16) = (1, 1);
pub const EPOCH_MAX: (u8, u16) = (5, 100);

/// Epoch length in units of 100 us for CFG1's scale (1 = 100 us ... 5 = 1 s) and multiplier;
/// None for a reserved scale.
pub fn epoch_units(scale: u8, mult: u16) -> Option<u64> {
    let unit = match scale {
        1..=5 => 10u64.pow(u32::from(scale) - 1),
        _ => return None,
    };
    Some(unit * u64::from(mult))
}

/// Epoch length in clock units for CFG1's scale and multiplier (1 = 100 us ... 5 = 1 s).
pub fn epoch_length(scale: u8, mult: u16) -> Option<u64> {
    epoch_units(scale, mult)
        .filter(|_| mult > 0)
        .map(|units| units * 100_000)
}

const BLOCK_ROOM: u64 = CHMU_BLOCK_SIZE - CHMU_FIRST_INSTANCE;

fn paged_length(entries: u64) -> u64 {
    CHMU_PAGE + (entries * 8).next_multiple_of(CHMU_PAGE)
}

fn compact_length(entries: u64) -> u64 {
    (CHMU_HOTLIST_COMPACT + entries * 8).next_multiple_of(64)
}

impl ChmuConfig {
    /// The placement this configuration gets (paged whenever its instances fit the block).
    pub fn placement(&self) -> Placement {
        match self.hotlist_window {
            Some(w) => Placement::Window(w),
            None if u64::from(self.instances) * paged_length(u64::from(self.hotlist_size))
                <= BLOCK_ROOM =>
            {
                Placement::Paged
            }
            None => Placement::Compact,
        }
    }

    /// This configuration with its hotlist reduced so every instance fits the block: paged
    /// if a paged hotlist of at least one page fits, compact otherwise (at least 2 entries).
    pub fn fitted(mut self) -> Self {
        self.instances = self.instances.max(1);
        self.hotlist_size = self.hotlist_size.max(2);
        if self.hotlist_window.is_some() {
            return self;
        }
        let n = u64::from(self.instances);
        let h = u64::from(self.hotlist_size);
        let per = BLOCK_ROOM / n;
        let paged_max = (per / CHMU_PAGE * CHMU_PAGE).saturating_sub(CHMU_PAGE) / 8;
        let fit = if paged_max >= CHMU_PAGE / 8 {
            h.min(paged_max)
        } else {
            h.min(((per / 64 * 64).saturating_sub(CHMU_HOTLIST_COMPACT)) / 8)
        };
        self.hotlist_size = u16::try_from(fit.max(2)).unwrap_or(u16::MAX);
        self
    }

    /// CHMU Instance Length (common capability 1): bytes from one instance to the next.
    pub fn instance_length(&self) -> u64 {
        let h = u64::from(self.hotlist_size);
        match self.placement() {
            Placement::Paged => paged_length(h),
            Placement::Compact => compact_length(h),
            Placement::Window(_) => compact_length(0),
        }
    }

    /// Offset of instance `i` in the block.
    pub fn instance_base(&self, i: u8) -> u64 {
        CHMU_FIRST_INSTANCE + u64::from(i) * self.instance_length()
    }

    /// Bytes of the block the instances occupy (common capability included).
    pub fn block_extent(&self) -> u64 {
        self.instance_base(self.instances)
    }

    /// Bytes between two instances' hotlists in the window.
    pub fn hotlist_stride(&self) -> u64 {
        (u64::from(self.hotlist_size) * 8).next_multiple_of(CHMU_PAGE)
    }

    /// Bytes of the hotlist window (0 without one).
    pub fn hotlist_window_size(&self) -> u64 {
        self.hotlist_window
            .map_or(0, |_| u64::from(self.instances) * self.hotlist_stride())
    }

    /// Offset in the registers' BAR of entry 0 of instance `i`'s hotlist.
    pub fn hotlist_bar_offset(&self, i: u8) -> u64 {
        match self.placement() {
            Placement::Window(w) => w + u64::from(i) * self.hotlist_stride(),
            _ => CHMU_BLOCK_OFFSET + self.instance_base(i) + self.cap3(i),
        }
    }

    /// CAP3 of instance `i`: its hotlist's offset from the instance base.
    pub fn cap3(&self, i: u8) -> u64 {
        match self.placement() {
            Placement::Paged => CHMU_HOTLIST_PAGED,
            Placement::Compact => CHMU_HOTLIST_COMPACT,
            Placement::Window(_) => {
                self.hotlist_bar_offset(i) - (CHMU_BLOCK_OFFSET + self.instance_base(i))
            }
        }
    }

    /// Bytes from CAP2 to CAP3 (the bitmap register's length, §8.2.8.7); 512 with a window.
    pub fn range_bitmap_length(&self) -> u64 {
        match self.placement() {
            Placement::Paged => CHMU_HOTLIST_PAGED - CHMU_RANGE_BITMAP,
            _ => CHMU_RANGE_BITMAP_BYTES,
        }
    }

    /// Range-bitmap bits that cover device memory (writable); the others are reserved.
    pub fn range_bits(&self) -> u64 {
        self.capacity
            .div_ceil(CHMU_RANGE_UNIT)
            .min(self.range_bitmap_length() * 8)
    }

    /// Parts of the registers' BAR the guest may map directly: (offset, bytes), page aligned.
    /// Paged: one area per hotlist (the block's register pages stay trapped); window: the
    /// window; compact: none.
    pub fn mapped_areas(&self) -> Vec<(u64, u64)> {
        match self.placement() {
            Placement::Paged => (0..self.instances)
                .map(|i| (self.hotlist_bar_offset(i), self.hotlist_stride()))
                .collect(),
            Placement::Window(w) => vec![(w, self.hotlist_window_size())],
            Placement::Compact => Vec::new(),
        }
    }

    pub fn cap0(&self) -> u64 {
        ChmuCap0::new()
            .with_int_msg_num(self.msix_vector)
            .with_overflow_int(true)
            .with_fill_int(true)
            .with_epoch_type(0)
            .with_tracked_m2s(0x3f)
            .with_max_epoch_scale(EPOCH_MAX.0)
            .with_max_epoch_mult(EPOCH_MAX.1)
            .with_min_epoch_scale(EPOCH_MIN.0)
            .with_min_epoch_mult(EPOCH_MIN.1)
            .with_hotlist_size(self.hotlist_size)
            .into()
    }

    pub fn cap1(&self) -> u64 {
        ChmuCap1::new()
            .with_unit_sizes(self.unit_sizes)
            .with_downsampling(self.downsampling)
            .with_epoch_reporting(true)
            .with_always_on_reporting(true)
            .with_randomized_downsampling(true)
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(instances: u8, hotlist_size: u16) -> ChmuConfig {
        ChmuConfig {
            instances,
            hotlist_size,
            ..ChmuConfig::default()
        }
        .fitted()
    }

    /// The spec's rules, checked for every instance: the hotlist lies inside its instance,
    /// the instances inside the block, and (paged) each hotlist starts on a page boundary of
    /// the BAR and its mapped pages hold nothing of another instance.
    fn assert_spec_layout(c: &ChmuConfig) {
        let len = c.instance_length();
        assert!(len <= u64::from(u16::MAX), "instance length fits CAP1");
        assert!(
            c.block_extent() <= CHMU_BLOCK_SIZE,
            "{c:?} leaves the block"
        );
        for i in 0..c.instances {
            let base = CHMU_FIRST_INSTANCE + u64::from(i) * len;
            assert_eq!(c.instance_base(i), base);
            let cap3 = c.cap3(i);
            assert!(cap3 >= CHMU_RANGE_BITMAP + 8, "hotlist after the registers");
            assert!(
                cap3 + u64::from(c.hotlist_size) * 8 <= len,
                "{c:?}: hotlist {i} leaves its instance"
            );
            assert_eq!(c.hotlist_bar_offset(i), CHMU_BLOCK_OFFSET + base + cap3);
        }
        for (off, size) in c.mapped_areas() {
            assert_eq!(off % CHMU_PAGE, 0);
            assert_eq!(size % CHMU_PAGE, 0);
            let rel = off - CHMU_BLOCK_OFFSET;
            let i = (rel - CHMU_FIRST_INSTANCE) / len;
            let start = c.instance_base(i as u8);
            assert!(
                rel > start + CHMU_HOTLIST_TAIL + 2,
                "registers stay trapped"
            );
            assert!(
                rel + size <= start + len,
                "mapped pages stay in the instance"
            );
        }
    }

    #[test]
    fn the_default_layout_is_paged_and_inside_every_instance() {
        let c = ChmuConfig::default().fitted();
        assert_eq!(c.placement(), Placement::Paged);
        assert_eq!(c.hotlist_size, 1024);
        assert_eq!(c.instance_length(), 0x3000);
        assert_eq!(c.cap3(0), 0xff0);
        assert_eq!(c.block_extent(), 0x6010);
        assert_eq!(
            c.mapped_areas(),
            vec![
                (CHMU_BLOCK_OFFSET + 0x1000, 0x2000),
                (CHMU_BLOCK_OFFSET + 0x4000, 0x2000)
            ]
        );
        assert_spec_layout(&c);
    }

    #[test]
    fn every_instance_count_and_hotlist_size_keeps_the_spec_layout() {
        for n in 1..=16u8 {
            for h in [0u16, 1, 2, 100, 511, 512, 513, 1024, 3000, 7168, u16::MAX] {
                let c = cfg(n, h);
                assert_spec_layout(&c);
                assert_eq!(c.placement() == Placement::Paged, n <= 7, "{c:?}");
                assert!(c.hotlist_size >= 2 && c.hotlist_size <= h.max(2));
            }
        }
        assert_eq!(cfg(2, u16::MAX).hotlist_size, 3072);
        assert_eq!(cfg(1, u16::MAX).hotlist_size, 7168);
    }

    #[test]
    fn a_window_points_cap3_past_the_block() {
        let c = ChmuConfig {
            hotlist_window: Some(CHMU_HOTLIST_WINDOW),
            ..ChmuConfig::default()
        }
        .fitted();
        assert_eq!(c.instance_length(), 0x280);
        for i in 0..2u8 {
            assert_eq!(
                CHMU_BLOCK_OFFSET + c.instance_base(i) + c.cap3(i),
                CHMU_HOTLIST_WINDOW + u64::from(i) * 8192
            );
        }
        assert_eq!(c.mapped_areas(), vec![(CHMU_HOTLIST_WINDOW, 0x4000)]);
    }

    #[test]
    fn range_bits_cover_the_capacity_only() {
        let c = ChmuConfig {
            capacity: 1 << 30,
            ..ChmuConfig::default()
        };
        assert_eq!(c.range_bits(), 4);
        assert_eq!(c.range_bitmap_length(), 0xf80);
    }

    #[test]
    fn epoch_units_follow_the_scale_table() {
        assert_eq!(epoch_units(1, 1), Some(1));
        assert_eq!(epoch_units(3, 7), Some(700));
        assert_eq!(epoch_units(5, 100), Some(1_000_000));
        assert_eq!(epoch_units(0, 1), None);
        assert_eq!(epoch_units(6, 1), None);
    }
}
