//! The admin group (SDXi 1.0 chapter 5, "Administrative" descriptors), accepted only on the
//! admin context 0: CXT_START_NM / CXT_START_RS, CXT_STOP, SYNC, and CXT_UPD / AKEY_UPD /
//! FN_UPD.
//!
//! - a start re-reads the context's tables, sets CXT_STS.state = RUN and queues a pass for it
//!   (NM and RS alike: the ring resumes from CXT_STS.read_index, which software sets);
//! - a stop waits for the context's pass in flight, then sets STOP_SW;
//! - SYNC waits for the current pass of every context in its range;
//! - the update descriptors complete at once: nothing is cached between passes.
//!
//! Left out: the start's db_value (the write index is always read from memory), SYNC's filter
//! and key range (it always waits for the contexts), CXT_STOP's hard-stop and VF flags.

use super::context::{set_state, CxtEvent};
use super::engine::{invalid, lock, Engine, EngineError, Platform};
use super::execute::Pass;
use crate::mem::*;
use tracing::debug;
use vfio_device::dma::DmaMemory;

impl<M: DmaMemory, P: Platform> Engine<M, P> {
    /// The contexts `start..=end` if that range is valid for an admin descriptor.
    fn context_range(
        &self,
        start: u16,
        end: u16,
    ) -> Result<std::ops::RangeInclusive<u16>, EngineError> {
        let max = self.busy.len() as u16 - 1;
        if start == 0 || start > end || end > max {
            return Err(invalid(
                ErrClass::InvalidContext,
                step::DESCRIPTOR,
                "context range empty, includes 0 or exceeds max_cxt",
            ));
        }
        Ok(start..=end)
    }

    /// Executes admin descriptor subtype `sub`.
    pub(crate) fn admin(
        &self,
        p: &mut Pass<'_, M>,
        sub: u8,
        d: &Descriptor,
    ) -> Result<(), EngineError> {
        match sub {
            DSC_ADMIN_CXT_START_NM | DSC_ADMIN_CXT_START_RS => {
                let s: DscCxtStart = d.as_type();
                for id in self.context_range(s.cxt_start.get(), s.cxt_end.get())? {
                    let cx = self.load(p.mem, id)?;
                    self.options.on_context_start.call(id);
                    set_state(p.mem, &cx, CxtEvent::Start)?;
                    p.counts.contexts_started += 1;
                    debug!(cxt = id, "context started");
                    p.kicks.push(id);
                }
                Ok(())
            }
            DSC_ADMIN_CXT_STOP => {
                let s: DscCxtStart = d.as_type();
                for id in self.context_range(s.cxt_start.get(), s.cxt_end.get())? {
                    // Waits for the context's pass in flight; then it stays stopped.
                    let _pass = lock(&self.busy[usize::from(id)]);
                    let cx = self.load(p.mem, id)?;
                    set_state(p.mem, &cx, CxtEvent::Stop)?;
                    p.counts.contexts_stopped += 1;
                }
                Ok(())
            }
            DSC_ADMIN_SYNC => {
                let s: DscSync = d.as_type();
                let max = self.busy.len() as u16 - 1;
                let (a, b) = (s.cxt_start.get().max(1), s.cxt_end.get().min(max));
                for id in a..=b {
                    drop(lock(&self.busy[usize::from(id)]));
                }
                Ok(())
            }
            DSC_ADMIN_CXT_UPD | DSC_ADMIN_AKEY_UPD | DSC_ADMIN_FN_UPD => Ok(()),
            _ => Err(invalid(
                ErrClass::InvalidDescriptor,
                step::DESCRIPTOR,
                "unknown admin subtype",
            )),
        }
    }
}
