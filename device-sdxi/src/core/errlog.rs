//! The function's error log (SDXi 1.0 §9.2 ERR_CTL/ERR_STS/ERR_CFG/ERR_WRT/ERR_RD, and the
//! ERRLOG_HD_ENT structure): every error is counted; while ERR_CFG.en is set it is also
//! written as a 64-byte entry at ERR_WRT % entries (ERR_WRT advanced, ERR_STS.sts set), a full
//! log sets ERR_STS.ovf instead, a log it cannot write sets ERR_STS.err; vector 0 is raised
//! when ERR_CTL.en and CTL0.fn_err_intr_en are both set.
//!
//! Left out: the buffer fields (bv, buf), sub_step, vendor bytes, and the error-log
//! interrupt's coalescing (one interrupt per error).

use super::engine::{lock, Engine, EngineError, Platform};
use crate::mem::{errlog_entries, ErrlogHdEnt, ErrlogHdr, ERRLOG_TYPE};
use crate::metrics::EngineCounters;
use crate::regs::{self, ErrCfg, ErrCtl, ErrSts};
use tracing::warn;
use vfio_device::dma::DmaMemory;
use zerocopy::IntoBytes;

impl<M: DmaMemory, P: Platform> Engine<M, P> {
    /// Records an error: counter, ERRLOG_HD_ENT (when the log is enabled), ERR_STS, vector 0.
    pub fn log_error(
        &self,
        mem: &M,
        c: &mut EngineCounters,
        cxt: Option<u16>,
        index: Option<u64>,
        e: EngineError,
        re: u8,
    ) {
        let class = e.class();
        c.errors.count(class);
        tracing::trace!(target: "sdxi::errlog", ?cxt, ?index, ?class, step = e.step(), re, error = %e);
        warn!(?cxt, ?index, ?class, error = %e, "SDXi error");
        let mut regs = lock(&self.regs);
        let cfg = ErrCfg::from(regs.reg(regs::MMIO_ERR_CFG));
        if !cfg.en() {
            return;
        }
        let entries = errlog_entries(cfg.sz());
        let (wrt, rd) = (regs.reg(regs::MMIO_ERR_WRT), regs.reg(regs::MMIO_ERR_RD));
        let mut sts = ErrSts::from(regs.reg(regs::MMIO_ERR_STS));
        if wrt.wrapping_sub(rd) >= entries {
            c.errlog_overflows += 1;
            sts.set_ovf(true);
        } else {
            let hdr = ErrlogHdr::new()
                .with_vl(true)
                .with_step(e.step())
                .with_ty(ERRLOG_TYPE as u16)
                .with_cv(cxt.is_some())
                .with_div(index.is_some())
                .with_re(re)
                .with_cxt_num(cxt.unwrap_or(0));
            let ent = ErrlogHdEnt {
                hdr: u64::from(hdr).into(),
                dsc_index: index.unwrap_or(0).into(),
                err_class: (class as u16).into(),
                ..Default::default()
            };
            let addr = (cfg.ptr() << 12).wrapping_add((wrt % entries) * 64);
            if mem.write(addr, ent.as_bytes()).is_ok() {
                regs.device_set(regs::MMIO_ERR_WRT, wrt + 1);
                c.errlog_entries += 1;
                sts.set_sts(true);
            } else {
                sts.set_err(true);
            }
        }
        regs.device_set(regs::MMIO_ERR_STS, sts.into());
        let intr = ErrCtl::from(regs.reg(regs::MMIO_ERR_CTL)).en()
            && regs::Ctl0::from(regs.reg(regs::MMIO_CTL0)).fn_err_intr_en();
        drop(regs);
        if intr {
            self.raise(0, c);
        }
    }
}
