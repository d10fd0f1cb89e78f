//! The SDXi PCI function as a vfio-user device: BAR0 control registers, BAR2 doorbells,
//! BAR4 MSI-X table (emulated by QEMU itself), and its configuration space (SDXi 1.0 §9.1, the
//! PCI class code 0x120100 and BARs; §9.2 the doorbell region, one page per context).
//!
//! Doorbells kick the context's pass on the worker pool; the engine
//! ([`crate::core::engine`]) does the rest. The control socket's `state`, `fault`,
//! `stop_context` and `out_of_order` requests, and the counters ([`crate::metrics`]), are
//! answered here. Left out: SR-IOV, MSI (MSI-X only), and a doorbell value's meaning beyond
//! "this context has work" (the write index is read from memory).

use crate::regs::{self, SdxiConfig};
use vfio_device::pci::{
    BarDef, ConfigError, ConfigSpace, ConfigSpaceBuilder, MsixDef, CONFIG_SPACE_EXTENDED,
};

/// Builds the SDXi function's configuration space (class code 0x120100, SNIA SDXi v1.0a PCIe function).
pub fn config_space(cfg: &SdxiConfig) -> Result<ConfigSpace, ConfigError> {
    Ok(ConfigSpaceBuilder::new(
        regs::EMU_VENDOR_ID,
        regs::EMU_DEVICE_ID,
        regs::SDXI_CLASS_CODE,
        1,
        CONFIG_SPACE_EXTENDED,
    )
    .bar(BarDef {
        index: regs::CONTROL_BAR,
        size: regs::CONTROL_BAR_SIZE,
        is_64bit: true,
        prefetchable: false,
    })?
    .bar(BarDef {
        index: regs::DOORBELL_BAR,
        size: cfg.doorbell_bar_size(),
        is_64bit: true,
        prefetchable: false,
    })?
    .bar(BarDef {
        index: regs::MSIX_BAR,
        size: 0x1000,
        is_64bit: true,
        prefetchable: false,
    })?
    .interrupt_pin(1)
    .msix(MsixDef {
        vectors: cfg.msix_vectors(),
        table_bar: regs::MSIX_BAR,
        table_offset: regs::MSIX_TABLE_OFFSET,
        pba_bar: regs::MSIX_BAR,
        pba_offset: regs::MSIX_PBA_OFFSET,
    })?
    .pcie_endpoint()?
    .build())
}

#[cfg(feature = "server")]
pub use server::{DeviceOptions, DoorbellMode, SdxiDevice};

#[cfg(feature = "server")]
mod server {
    use crate::core::{Engine, EngineOptions, FaultPlan};
    use crate::metrics::{DoorbellCounters, SdxiMetrics};
    use crate::regs::{self, FnState, SdxiConfig};
    use crate::transport::doorbell::MappedDoorbells;
    use crate::transport::platform::ServerPlatform;
    use crate::transport::workers::Workers;
    use std::sync::Arc;
    use vfio_device::dma_space::DmaSpace;
    use vfio_device::{interrupts::Interrupts, server::PciDevice};

    /// How doorbells reach the device.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
    pub enum DoorbellMode {
        /// BAR2 is a memfd QEMU maps into the guest; a watcher thread notices writes.
        Mapped,
        /// Every doorbell write is a vfio-user message through the socket.
        Trapped,
    }

    /// How the device runs.
    #[derive(Clone, Debug)]
    pub struct DeviceOptions {
        /// Doorbell path.
        pub doorbell: DoorbellMode,
        /// Worker threads running context passes.
        pub workers: usize,
        /// Threads one large COPY is split over.
        pub copy_threads: usize,
        /// Complete descriptors between fences in reverse order.
        pub force_out_of_order: bool,
    }

    impl Default for DeviceOptions {
        fn default() -> Self {
            Self {
                doorbell: DoorbellMode::Trapped,
                workers: 2,
                copy_threads: 1,
                force_out_of_order: false,
            }
        }
    }

    /// The device model behind the transport.
    pub struct SdxiDevice {
        pub engine: Arc<Engine<DmaSpace, ServerPlatform>>,
        workers: Arc<Workers>,
        mapped: Option<Arc<MappedDoorbells>>,
        dma: Arc<DmaSpace>,
        interrupts: Interrupts,
        pub doorbells: DoorbellCounters,
    }

    impl std::fmt::Debug for SdxiDevice {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SdxiDevice")
                .field("workers", &self.workers)
                .finish_non_exhaustive()
        }
    }

    impl SdxiDevice {
        pub fn new(cfg: SdxiConfig, opts: &DeviceOptions) -> Self {
            let interrupts = Interrupts::default();
            let eo = EngineOptions::default();
            eo.force_out_of_order.store(
                opts.force_out_of_order,
                std::sync::atomic::Ordering::Relaxed,
            );
            let contexts = usize::from(cfg.max_cxt) + 1;
            let stride = cfg.doorbell_stride() as usize;
            let bar_size = cfg.doorbell_bar_size() as usize;
            let platform = ServerPlatform::new(interrupts.clone(), opts.copy_threads);
            let engine = Arc::new(Engine::new(cfg, platform, eo));
            let dma = Arc::new(DmaSpace::default());
            engine.set_memory(Some(Arc::clone(&dma)));
            let (e, d) = (Arc::clone(&engine), Arc::clone(&dma));
            // Every pass first lets maps already sent on the socket land (a mapped doorbell
            // does not travel behind them), then keeps the table's reader lock from one
            // access to the next until a map or unmap asks for it.
            let workers = Arc::new(Workers::new(opts.workers, contexts, move |c| {
                d.settle();
                d.pass(|| e.process(c))
            }));
            let mapped = match opts.doorbell {
                DoorbellMode::Trapped => None,
                DoorbellMode::Mapped => {
                    let (e, w) = (Arc::clone(&engine), Arc::clone(&workers));
                    MappedDoorbells::new(bar_size, stride, move |c| {
                        tracing::trace!(target: "sdxi::doorbell", path = "mapped", cxt = c);
                        if e.doorbell(c) {
                            w.kick(c);
                        }
                    })
                    .map_err(
                        |err| tracing::error!(error = %err, "falling back to trapped doorbells"),
                    )
                    .ok()
                    .map(Arc::new)
                }
            };
            if let Some(m) = &mapped {
                // Weak: the watcher holds the engine, which must not keep the watcher alive.
                let m = Arc::downgrade(m);
                engine.options().on_context_start.set(move |c| {
                    if let Some(m) = m.upgrade() {
                        m.reset_context(c);
                    }
                });
            }
            Self {
                engine,
                workers,
                mapped,
                dma,
                interrupts,
                doorbells: DoorbellCounters::default(),
            }
        }
    }

    impl SdxiDevice {
        /// Every counter of the function, read now.
        pub fn metrics(&self) -> SdxiMetrics {
            let regs = self.engine.registers();
            SdxiMetrics {
                function: regs.counters().clone(),
                state: regs.state(),
                doorbells: self.doorbells.clone(),
                mapped_doorbells: self.mapped.as_ref().map(|m| m.counters()),
                engine: self.engine.counters(),
            }
        }
    }

    impl PciDevice for SdxiDevice {
        fn name(&self) -> &'static str {
            "sdxi"
        }

        fn interrupts(&self) -> Interrupts {
            self.interrupts.clone()
        }

        fn bar_mmap(&self, bar: u8) -> Option<(std::os::fd::RawFd, u64, u64)> {
            let m = self.mapped.as_ref().filter(|_| bar == regs::DOORBELL_BAR)?;
            Some((m.fd(), 0, self.engine.config().doorbell_bar_size()))
        }

        fn dma_space(&self) -> Option<Arc<DmaSpace>> {
            Some(Arc::clone(&self.dma))
        }

        fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            match bar {
                regs::CONTROL_BAR => self.engine.mmio_read(offset, data),
                _ => data.fill(0),
            }
        }

        fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
            match bar {
                regs::CONTROL_BAR => {
                    let was = self.engine.registers().state();
                    self.engine.mmio_write(offset, data);
                    // Entering ACTIVE runs the admin context once: the jump start, also for a
                    // mapped doorbell where a write of 0 to a page reading 0 is invisible.
                    // The mapped doorbells read 0 again first: a driver that re-initialises the
                    // function rings with the same values as before, which must not go unseen.
                    if was != FnState::Active && self.engine.registers().state() == FnState::Active
                    {
                        if let Some(m) = &self.mapped {
                            m.reset();
                        }
                        self.dma.start_prefault();
                        self.workers.kick(0);
                    }
                }
                regs::DOORBELL_BAR => {
                    let stride = self.engine.config().doorbell_stride();
                    if data.len() != 8 || !offset.is_multiple_of(stride) {
                        self.doorbells.doorbell_guest_errors += 1;
                        return;
                    }
                    self.doorbells.doorbells += 1;
                    let cxt = u16::try_from(offset / stride).unwrap_or(u16::MAX);
                    tracing::trace!(target: "sdxi::doorbell", path = "trapped", cxt, value = format_args!("{:#x}", u64::from_le_bytes(data.try_into().unwrap_or([0; 8]))));
                    if let Some(m) = &self.mapped {
                        let mut v = [0u8; 8];
                        v.copy_from_slice(data);
                        m.store(cxt, u64::from_le_bytes(v));
                    }
                    if self.engine.doorbell(cxt) {
                        self.workers.kick(cxt);
                    }
                }
                _ => {}
            }
        }

        fn reset(&mut self) {
            self.engine.reset();
            if let Some(m) = &self.mapped {
                m.reset();
            }
        }

        fn control(&mut self, req: &serde_json::Value) -> Result<serde_json::Value, String> {
            match req["cmd"].as_str() {
                Some("state") => {
                    let regs = self.engine.registers();
                    let named: serde_json::Map<String, serde_json::Value> = regs::REGISTERS
                        .iter()
                        .map(|r| {
                            (
                                r.name.to_owned(),
                                format!("{:#x}", regs.reg(r.offset)).into(),
                            )
                        })
                        .collect();
                    Ok(serde_json::json!({
                        "device": "sdxi",
                        "state": regs.state(),
                        "registers": named,
                        "faults": self.engine.faults(),
                        "doorbell_mode": if self.mapped.is_some() { "mapped" } else { "trapped" },
                    }))
                }
                Some("fault") => {
                    let mut plan = req.clone();
                    if let Some(o) = plan.as_object_mut() {
                        o.remove("cmd");
                    }
                    let plan: FaultPlan =
                        serde_json::from_value(plan).map_err(|e| format!("bad fault plan: {e}"))?;
                    self.engine.set_faults(plan.clone());
                    Ok(serde_json::json!({ "faults": plan }))
                }
                Some("stop_context") => {
                    let cxt = req["cxt"]
                        .as_u64()
                        .and_then(|c| u16::try_from(c).ok())
                        .ok_or("stop_context needs \"cxt\": a context number")?;
                    if self.engine.stop_context(cxt) {
                        Ok(serde_json::json!({ "stopped": cxt }))
                    } else {
                        Err(format!(
                            "context {cxt} has no valid table entry (or no guest memory yet)"
                        ))
                    }
                }
                Some("out_of_order") => {
                    let on = req["on"]
                        .as_bool()
                        .ok_or("out_of_order needs \"on\": true or false")?;
                    self.engine
                        .options()
                        .force_out_of_order
                        .store(on, std::sync::atomic::Ordering::Relaxed);
                    Ok(serde_json::json!({ "out_of_order": on }))
                }
                _ => Err(format!(
                    "unknown command {} (counters, state, fault, stop_context, out_of_order)",
                    req["cmd"]
                )),
            }
        }

        fn counters(&self) -> serde_json::Value {
            serde_json::to_value(self.metrics()).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_has_sdxi_identity_and_bars() {
        let c = config_space(&SdxiConfig::default()).expect("valid");
        assert_eq!(c.get_u32(0x08) >> 8, 0x12_01_00);
        assert_eq!(c.bar(0).map(|b| b.size), Some(0x40000));
        assert_eq!(c.bar(2).map(|b| b.size), Some(0x80000));
        assert_eq!(c.msix().map(|m| m.vectors), Some(66));
    }
}
