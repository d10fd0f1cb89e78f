//! The check an enable goes through (CXL 3.2 §8.2.8.3): every CFG field against what the
//! capabilities (§8.2.8.2) and STATUS counter width advertise. A configuration outside them
//! is refused, the instance stays disabled (`core::state`: Enable Refused), since §8.2.8.4
//! has no error field to report it (STATUS bits \[15:1\] are reserved). Fields the spec says
//! the device ignores when out of range are not checked: an unsupported reporting mode counts
//! as epoch-based and a notification threshold above the hotlist size never fires.

use super::chmu::ChmuBlock;
use crate::spec::layout::epoch_units;
use crate::spec::regs::*;

/// Why an enable was refused: the CFG field outside the advertised capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("M2S request type {0} is reserved or not tracked (CAP0)")]
    RequestType(u8),
    #[error("unit size 2^{0} bytes is not offered (CAP1)")]
    UnitSize(u32),
    #[error("down-sampling factor 2^{0} is not offered (CAP1)")]
    DownSampling(u8),
    #[error("epoch scale {0} is reserved")]
    EpochScale(u8),
    #[error("epoch {scale}x{mult} is outside the advertised {min:?}..{max:?} (CAP0)")]
    Epoch {
        scale: u8,
        mult: u16,
        min: (u8, u16),
        max: (u8, u16),
    },
    #[error("hotness threshold {0} cannot be exceeded by the counters (STATUS counter width)")]
    Threshold(u32),
    #[error("the range bitmap selects no memory of the device")]
    EmptyRange,
}

impl ChmuBlock {
    /// Checks the configuration an enable of instance `i` asks for against the capabilities.
    pub fn check_enable(&self, i: u8) -> Result<(), Refusal> {
        let config = self.config();
        let base = config.instance_base(i);
        let cfg0 = ChmuCfg0::from(self.get(base + CHMU_CFG0));
        let cfg1 = ChmuCfg1::from(self.get(base + CHMU_CFG1));
        let cap0 = ChmuCap0::from(self.get(base + CHMU_CAP0));
        let req = cfg0.m2s_req_type();
        if !(1..=6).contains(&req) || cap0.tracked_m2s() & (1 << (req - 1)) == 0 {
            return Err(Refusal::RequestType(req));
        }
        let unit = cfg1.unit_size();
        if !unit
            .checked_sub(8)
            .is_some_and(|n| n < 32 && config.unit_sizes & (1 << n) != 0)
        {
            return Err(Refusal::UnitSize(unit));
        }
        let ds = cfg1.downsampling();
        if config.downsampling & (1 << ds) == 0 {
            return Err(Refusal::DownSampling(ds));
        }
        check_epoch(cap0, cfg1)?;
        let width = ChmuStatus::from(self.get(base + CHMU_STATUS)).counter_width();
        let counter_max = (1u64 << width.min(63)) - 1;
        if u64::from(cfg0.threshold()) >= counter_max {
            return Err(Refusal::Threshold(cfg0.threshold()));
        }
        if !(0..config.range_bits()).any(|b| self.range_selected(i, b * CHMU_RANGE_UNIT)) {
            return Err(Refusal::EmptyRange);
        }
        Ok(())
    }
}

/// CFG1's epoch: a defined scale, and a length within CAP0's minimum..maximum.
fn check_epoch(cap0: ChmuCap0, cfg1: ChmuCfg1) -> Result<(), Refusal> {
    let (scale, mult) = (cfg1.epoch_scale(), cfg1.epoch_mult());
    let epoch = epoch_units(scale, mult).ok_or(Refusal::EpochScale(scale))?;
    let min = (cap0.min_epoch_scale(), cap0.min_epoch_mult());
    let max = (cap0.max_epoch_scale(), cap0.max_epoch_mult());
    let in_range = epoch_units(min.0, min.1).is_some_and(|m| epoch >= m.max(1))
        && epoch_units(max.0, max.1).is_some_and(|m| epoch <= m);
    if in_range {
        Ok(())
    } else {
        Err(Refusal::Epoch {
            scale,
            mult,
            min,
            max,
        })
    }
}
