//! Driver-side helper: lays out SDXi context tables, rings, AKeys and completion blocks in
//! memory the device can reach, builds descriptors, and submits them. Shared by the device's
//! tests, the conformance suite and the guest agent's userspace driver, so all of them
//! program the device the same way AMD's Linux SDXi driver does (the "dmaengine: Smart Data
//! Accelerator Interface (SDXI) basic support" series: `device.c`, `context.c`, `dma.c`).
//!
//! It covers the software side of SDXi 1.0's function initialisation (§4.1.8 as the driver
//! follows it), context tables, the ring enqueue protocol (write index, then vl; also the
//! multi-producer reservation) and completion polling. Left out: RKeys, PASIDs, the error
//! log's consumer side (tests read entries directly), and interrupts (the caller waits on
//! its own eventfd).

use crate::mem::*;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

/// Memory the driver writes tables into (device-visible addresses).
pub trait DriverMemory {
    fn write_bytes(&self, addr: u64, bytes: &[u8]);
    fn read_bytes(&self, addr: u64, buf: &mut [u8]);

    fn read_u64(&self, addr: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read_bytes(addr, &mut b);
        u64::from_le_bytes(b)
    }
}

impl<T: vfio_device::dma::DmaMemory> DriverMemory for T {
    fn write_bytes(&self, addr: u64, bytes: &[u8]) {
        let _ = self.write(addr, bytes);
    }
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) {
        let _ = self.read(addr, buf);
    }
}

/// Where one context's structures live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextLayout {
    pub id: u16,
    pub ring: u64,
    pub entries: u32,
    pub ctl: u64,
    pub sts: u64,
    pub write_index: u64,
    pub akeys: u64,
}

/// A bump allocator over a device-visible window plus the tables it set up.
#[derive(Debug)]
pub struct Driver {
    next: u64,
    end: u64,
    pub l2: u64,
    pub l1: u64,
    pub contexts: Vec<ContextLayout>,
    /// Write index of each context as last submitted.
    write_idx: Vec<(u16, u64)>,
}

/// The window ran out of room.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("driver memory window exhausted ({need:#x} bytes more needed)")]
pub struct OutOfMemory {
    pub need: u64,
}

impl Driver {
    /// Uses `base..base+size` (4 KiB aligned) for tables; allocates L2 and one L1 table.
    pub fn new<D: DriverMemory>(m: &D, base: u64, size: u64) -> Result<Self, OutOfMemory> {
        let mut d = Self {
            next: base,
            end: base + size,
            l2: 0,
            l1: 0,
            contexts: Vec::new(),
            write_idx: Vec::new(),
        };
        d.l2 = d.alloc(4096, 4096)?;
        d.l1 = d.alloc(4096, 4096)?;
        m.write_bytes(d.l2, CxtL2Ent::new(d.l1).as_bytes());
        Ok(d)
    }

    /// Allocates zeroed-by-caller space.
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<u64, OutOfMemory> {
        let a = self.next.next_multiple_of(align);
        if a + size > self.end {
            return Err(OutOfMemory {
                need: a + size - self.end,
            });
        }
        self.next = a + size;
        Ok(a)
    }

    /// Creates context `id` (< 128) with a ring of `entries`, AKey entries and the state
    /// (`Run` for the admin context, whose state software sets; `StopSw` for data contexts,
    /// which CXT_START starts). Publishes its L1 entry last.
    pub fn add_context<D: DriverMemory>(
        &mut self,
        m: &D,
        id: u16,
        entries: u32,
        akeys: &[AkeyEnt],
        state: CxtState,
    ) -> Result<ContextLayout, OutOfMemory> {
        let ring = self.alloc(u64::from(entries) * DESC_SIZE, 4096)?;
        let ctl = self.alloc(64, 64)?;
        let sts = self.alloc(16, 16)?;
        let wi = self.alloc(8, 8)?;
        let akt = self.alloc(4096, 4096)?;
        m.write_bytes(ring, &vec![0u8; (u64::from(entries) * DESC_SIZE) as usize]);
        m.write_bytes(akt, &[0u8; 4096]);
        for (i, a) in akeys.iter().enumerate() {
            m.write_bytes(akt + i as u64 * 16, a.as_bytes());
        }
        m.write_bytes(wi, &0u64.to_le_bytes());
        let s = CxtSts {
            state: U32::new(state as u32),
            ..CxtSts::default()
        };
        m.write_bytes(sts, s.as_bytes());
        let c = CxtCtl {
            // vl | se | csa, as the Linux driver writes it.
            ds_ring_ptr: U64::new(ring | 0x31),
            ds_ring_sz: U32::new(entries),
            cxt_sts_ptr: U64::new(sts),
            write_index_ptr: U64::new(wi),
            ..CxtCtl::default()
        };
        m.write_bytes(ctl, c.as_bytes());
        let l1 = CxtL1Ent {
            cxt_ctl_ptr: U64::new(ctl | 0b11),
            akey_ptr: U64::new(akt),
            misc: U32::new(11 << 20),
            ..CxtL1Ent::default()
        };
        let (_, i1) = table_indices(id);
        m.write_bytes(self.l1 + u64::from(i1) * 32, l1.as_bytes());
        let layout = ContextLayout {
            id,
            ring,
            entries,
            ctl,
            sts,
            write_index: wi,
            akeys: akt,
        };
        self.contexts.push(layout);
        self.write_idx.push((id, 0));
        Ok(layout)
    }

    /// Re-initialises a stopped context's ring, status (StopSw, read index 0) and write index
    /// in place, as software does when it creates a context; the next submit starts at slot 0.
    /// Used to recover a context a descriptor error stopped.
    pub fn reset_context<D: DriverMemory>(&mut self, m: &D, id: u16) -> bool {
        let Some(c) = self.context(id) else {
            return false;
        };
        m.write_bytes(
            c.ring,
            &vec![0u8; (u64::from(c.entries) * DESC_SIZE) as usize],
        );
        let s = CxtSts {
            state: U32::new(CxtState::StopSw as u32),
            ..CxtSts::default()
        };
        m.write_bytes(c.sts, s.as_bytes());
        m.write_bytes(c.write_index, &0u64.to_le_bytes());
        if let Some(w) = self.write_idx.iter_mut().find(|(i, _)| *i == id) {
            w.1 = 0;
        }
        true
    }

    pub fn context(&self, id: u16) -> Option<ContextLayout> {
        self.contexts.iter().copied().find(|c| c.id == id)
    }

    /// Allocates a CST_BLK with signal = `count`.
    pub fn csb<D: DriverMemory>(&mut self, m: &D, count: u64) -> Result<u64, OutOfMemory> {
        let a = self.alloc(32, 32)?;
        let c = CstBlk {
            signal: U64::new(count),
            ..CstBlk::default()
        };
        m.write_bytes(a, c.as_bytes());
        Ok(a)
    }

    /// Writes `descs` at the ring's next slots, then the new write index; returns it (the
    /// doorbell value).
    pub fn submit<D: DriverMemory>(&mut self, m: &D, id: u16, descs: &[Descriptor]) -> u64 {
        let Some(c) = self.context(id) else {
            return 0;
        };
        let Some(w) = self.write_idx.iter_mut().find(|(i, _)| *i == id) else {
            return 0;
        };
        for d in descs {
            let slot = c.ring + (w.1 % u64::from(c.entries)) * DESC_SIZE;
            // Body first, header (with vl) last, as the spec's enqueue sample does.
            m.write_bytes(slot + 4, &d.as_bytes()[4..]);
            m.write_bytes(slot, &d.as_bytes()[..4]);
            w.1 += 1;
        }
        m.write_bytes(c.write_index, &w.1.to_le_bytes());
        w.1
    }

    /// Reserves `n` slots of context `id`'s ring the way the Linux driver's
    /// `sdxi_ring_try_reserve` and the spec's multi-producer enqueue sample do: the new write
    /// index is stored to memory at once, before any descriptor is written. The caller fills
    /// the slots (vl clear), sets vl later ([`Reservation::make_valid`]) and rings the
    /// doorbell with [`Reservation::dbval`]. None when `id` has no context or the ring has no
    /// room (`read_index` is read from memory for that check).
    pub fn reserve<D: DriverMemory>(&mut self, m: &D, id: u16, n: u64) -> Option<Reservation> {
        let c = self.context(id)?;
        let ri = m.read_u64(c.sts + 8);
        let w = self.write_idx.iter_mut().find(|(i, _)| *i == id)?;
        let entries = u64::from(c.entries);
        if n == 0 || n > entries || w.1 + n - ri.min(w.1) > entries {
            return None;
        }
        let start = w.1;
        w.1 += n;
        m.write_bytes(c.write_index, &w.1.to_le_bytes());
        Some(Reservation {
            ring: c.ring,
            entries,
            start,
            n,
        })
    }

    /// A context's read index as the device wrote it.
    pub fn read_index<D: DriverMemory>(&self, m: &D, id: u16) -> u64 {
        self.context(id).map_or(0, |c| m.read_u64(c.sts + 8))
    }

    /// A context's state as the device wrote it.
    pub fn state<D: DriverMemory>(&self, m: &D, id: u16) -> Option<CxtState> {
        let c = self.context(id)?;
        CxtState::from_bits(m.read_u64(c.sts) as u8)
    }
}

/// Ring slots `start..start + n` of one context, reserved by [`Driver::reserve`]. Plain
/// data: producers on several threads fill and validate their own reservations without a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub ring: u64,
    pub entries: u64,
    pub start: u64,
    pub n: u64,
}

impl Reservation {
    /// Address of the descriptor at ring index `index`.
    pub fn slot(&self, index: u64) -> u64 {
        self.ring + (index % self.entries) * DESC_SIZE
    }

    /// Writes `d` as the `i`th descriptor of the reservation: body first, then the header,
    /// with vl as `valid` says (the Linux driver encodes with vl clear and sets it at issue).
    pub fn write<D: DriverMemory>(&self, m: &D, i: u64, d: &Descriptor, valid: bool) {
        let slot = self.slot(self.start + i);
        let header = if valid {
            d.header.get() | 1
        } else {
            d.header.get() & !1
        };
        m.write_bytes(slot + 4, &d.as_bytes()[4..]);
        m.write_bytes(slot, &header.to_le_bytes());
    }

    /// Sets vl on the `i`th descriptor (read-modify-write of its header dword).
    pub fn make_valid<D: DriverMemory>(&self, m: &D, i: u64) {
        let slot = self.slot(self.start + i);
        let mut h = [0u8; 4];
        m.read_bytes(slot, &mut h);
        m.write_bytes(slot, &(u32::from_le_bytes(h) | 1).to_le_bytes());
    }

    /// The doorbell value that covers this reservation (its end index).
    pub fn dbval(&self) -> u64 {
        self.start + self.n
    }
}

/// (signal, er) of a CST_BLK.
pub fn csb_status<D: DriverMemory>(m: &D, csb: u64) -> (u64, bool) {
    let mut b = [0u8; 12];
    m.read_bytes(csb, &mut b);
    let signal = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let flags = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    (signal, flags & CST_FLAGS_ER != 0)
}

/// DMAB COPY of `len` (1..=4 GiB) bytes with AKey 0 for both sides.
pub fn copy(src: u64, dst: u64, len: u64, csb: Option<u64>, fe: bool) -> Descriptor {
    Descriptor::from_type(&DscDmabCopy {
        header: Descriptor::header_for(DSC_TYPE_DMAB, DSC_DMAB_COPY, fe),
        size: U32::new(len.saturating_sub(1).min(u64::from(u32::MAX)) as u32),
        addr0: U64::new(src),
        addr1: U64::new(dst),
        csb_ptr: Descriptor::csb_field(csb),
        ..DscDmabCopy::default()
    })
}

/// DMAB NOP.
pub fn nop(csb: Option<u64>, fe: bool) -> Descriptor {
    Descriptor {
        header: Descriptor::header_for(DSC_TYPE_DMAB, DSC_DMAB_NOP, fe),
        csb_ptr: Descriptor::csb_field(csb),
        ..Descriptor::default()
    }
}

/// INTR through AKey `akey`.
pub fn intr(akey: u16, fe: bool) -> Descriptor {
    let mut d = <DscIntr as zerocopy::FromZeros>::new_zeroed();
    d.header = Descriptor::header_for(DSC_TYPE_INTR, DSC_INTR, fe);
    d.akey = U16::new(akey);
    d.csb_ptr = Descriptor::csb_field(None);
    Descriptor::from_type(&d)
}

/// Admin CXT_START_NM (or _RS) for `start..=end`.
pub fn cxt_start(
    start: u16,
    end: u16,
    restart: bool,
    db_value: u64,
    csb: Option<u64>,
) -> Descriptor {
    let sub = if restart {
        DSC_ADMIN_CXT_START_RS
    } else {
        DSC_ADMIN_CXT_START_NM
    };
    Descriptor::from_type(&DscCxtStart {
        header: Descriptor::header_for(DSC_TYPE_ADMIN, sub, true),
        cxt_start: U16::new(start),
        cxt_end: U16::new(end),
        db_value: U64::new(db_value),
        csb_ptr: Descriptor::csb_field(csb),
        ..DscCxtStart::default()
    })
}

/// Admin CXT_STOP for `start..=end`.
pub fn cxt_stop(start: u16, end: u16, csb: Option<u64>) -> Descriptor {
    let mut d = cxt_start(start, end, false, 0, csb);
    d.header = Descriptor::header_for(DSC_TYPE_ADMIN, DSC_ADMIN_CXT_STOP, true);
    d
}

/// Admin SYNC over contexts `start..=end` with `filter` (0 CXT, 1 STOP).
pub fn sync(start: u16, end: u16, filter: u8, csb: Option<u64>) -> Descriptor {
    let mut s = <DscSync as zerocopy::FromZeros>::new_zeroed();
    s.header = Descriptor::header_for(DSC_TYPE_ADMIN, DSC_ADMIN_SYNC, true);
    s.cflags = filter & 7;
    s.cxt_start = U16::new(start);
    s.cxt_end = U16::new(end);
    s.csb_ptr = Descriptor::csb_field(csb);
    Descriptor::from_type(&s)
}

/// Register and doorbell access as a driver has it (BAR mmaps in a guest, vfio-user
/// messages in host tests).
pub trait Mmio {
    fn read64(&mut self, offset: u64) -> u64;
    fn write64(&mut self, offset: u64, value: u64);
    /// Writes `value` to context `cxt`'s doorbell (stride from CAP0).
    fn doorbell(&mut self, cxt: u16, value: u64);
}

/// Why the init sequence failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitError {
    #[error("MMIO_VERSION major {0}, expected 1")]
    Version(u8),
    #[error("function did not reach ACTIVE within 1 s (STS0.fn_gsv = {0})")]
    NotActive(u8),
    #[error("function did not stop within 1 s (STS0.fn_gsv = {0})")]
    NotStopped(u8),
    #[error(transparent)]
    Memory(#[from] OutOfMemory),
    #[error("context {0}: {1}")]
    Context(u16, &'static str),
}

fn gsv<M: Mmio>(m: &mut M) -> u8 {
    crate::regs::Sts0::from(m.read64(crate::regs::MMIO_STS0)).fn_gsv()
}

fn poll_state<M: Mmio>(m: &mut M, want: crate::regs::FnState) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        if gsv(m) == want as u8 {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The function init sequence of the Linux driver (`device.c`, SDXi 1.0 §4.1): stop, read identity,
/// CTL2 from CAP1, CXT_L2, admin context (ID 0, 1024 entries), error log at `errlog`
/// (64 entries) with interrupts, ACTIVE, jump start.
pub fn init_function<M: Mmio, D: DriverMemory>(
    mmio: &mut M,
    mem: &D,
    drv: &mut Driver,
    errlog: Option<u64>,
) -> Result<(), InitError> {
    use crate::regs::*;
    match FnState::from_gsv(gsv(mmio)) {
        Some(FnState::Stop) => mmio.write64(MMIO_CTL0, FnRequest::Reset as u64),
        Some(FnState::Error) => mmio.write64(MMIO_CTL0, FnRequest::Reset as u64),
        Some(FnState::StopgSf) => mmio.write64(MMIO_CTL0, FnRequest::StopHd as u64),
        _ => mmio.write64(MMIO_CTL0, FnRequest::StopSf as u64),
    }
    if !poll_state(mmio, FnState::Stop) {
        return Err(InitError::NotStopped(gsv(mmio)));
    }
    let major = Version::from(mmio.read64(MMIO_VERSION)).major();
    if major != 1 {
        return Err(InitError::Version(major));
    }
    let cap1 = Cap1::from(mmio.read64(MMIO_CAP1));
    mmio.write64(
        MMIO_CTL2,
        Ctl2::new()
            .with_max_buffer(cap1.max_buffer())
            .with_max_akey_sz(cap1.max_akey_sz())
            .with_max_cxt(cap1.max_cxt().min(127))
            .with_opb_000_avl(cap1.opb_000_cap())
            .into(),
    );
    mmio.write64(MMIO_CXT_L2, drv.l2);
    drv.add_context(
        mem,
        0,
        MIN_RING_ENTRIES,
        &[AkeyEnt::new(None, 0)],
        CxtState::Run,
    )?;
    let mut ctl0 = Ctl0::new();
    if let Some(log) = errlog {
        mem.write_bytes(log, &[0u8; 64 * 64]);
        mmio.write64(MMIO_ERR_CFG, 0);
        mmio.write64(MMIO_ERR_STS, 0xb);
        mmio.write64(MMIO_ERR_CTL, 1);
        mmio.write64(MMIO_ERR_WRT, 0);
        mmio.write64(MMIO_ERR_RD, 0);
        mmio.write64(
            MMIO_ERR_CFG,
            ErrCfg::new()
                .with_en(true)
                .with_sz(1)
                .with_ptr(log >> 12)
                .into(),
        );
        ctl0 = ctl0.with_fn_err_intr_en(true);
    }
    mmio.write64(MMIO_CTL0, ctl0.with_fn_gsr(FnRequest::Active as u8).into());
    if !poll_state(mmio, FnState::Active) {
        return Err(InitError::NotActive(gsv(mmio)));
    }
    mmio.doorbell(0, 0);
    Ok(())
}

/// Creates data context `id` (AKey 0 raising `vector`) and starts it through the admin ring,
/// waiting (up to `timeout`) for the CXT_START_NM completion.
pub fn start_context<M: Mmio, D: DriverMemory>(
    mmio: &mut M,
    mem: &D,
    drv: &mut Driver,
    id: u16,
    entries: u32,
    vector: Option<u16>,
    timeout: std::time::Duration,
) -> Result<(), InitError> {
    drv.add_context(
        mem,
        id,
        entries,
        &[AkeyEnt::new(vector, 0)],
        CxtState::StopSw,
    )?;
    let csb = drv.alloc(32, 32)?;
    start_request(mmio, mem, drv, id, csb, timeout)
}

/// Submits admin descriptors `d`, the last of which completes to `csb` (armed here), rings
/// the admin doorbell and waits for the completion: its `er` flag, or None on timeout.
fn admin_request<M: Mmio, D: DriverMemory>(
    mmio: &mut M,
    mem: &D,
    drv: &mut Driver,
    d: &[Descriptor],
    csb: u64,
    timeout: std::time::Duration,
) -> Option<bool> {
    let c = CstBlk {
        signal: U64::new(1),
        ..CstBlk::default()
    };
    mem.write_bytes(csb, c.as_bytes());
    let wi = drv.submit(mem, 0, d);
    mmio.doorbell(0, wi);
    wait_csb(mem, csb, timeout)
}

/// CXT_START_NM of context `id` through the admin ring, its completion in `csb`.
fn start_request<M: Mmio, D: DriverMemory>(
    mmio: &mut M,
    mem: &D,
    drv: &mut Driver,
    id: u16,
    csb: u64,
    timeout: std::time::Duration,
) -> Result<(), InitError> {
    let d = cxt_start(id, id, false, 0, Some(csb));
    match admin_request(mmio, mem, drv, &[d], csb, timeout) {
        Some(false) => Ok(()),
        Some(true) => Err(InitError::Context(
            id,
            "CXT_START_NM completed with an error",
        )),
        None => Err(InitError::Context(id, "CXT_START_NM did not complete")),
    }
}

/// Recovers data context `id` after an error or a timeout the way the Linux driver releases
/// and reallocates a channel: CXT_STOP then SYNC(STOP) with the completion through the admin
/// ring (the device finishes the pass in flight first, so nothing it does afterwards can race
/// the caller), re-initialise the context in place, CXT_START_NM. `csb` is scratch space for
/// one CST_BLK.
pub fn restart_context<M: Mmio, D: DriverMemory>(
    mmio: &mut M,
    mem: &D,
    drv: &mut Driver,
    id: u16,
    csb: u64,
    timeout: std::time::Duration,
) -> Result<(), InitError> {
    let stop = [cxt_stop(id, id, None), sync(id, id, 1, Some(csb))];
    if admin_request(mmio, mem, drv, &stop, csb, timeout) != Some(false) {
        return Err(InitError::Context(id, "CXT_STOP did not complete"));
    }
    drv.reset_context(mem, id);
    start_request(mmio, mem, drv, id, csb, timeout)
}

/// Polls a CST_BLK until its signal reaches 0; returns its er flag, or None on timeout.
pub fn wait_csb<D: DriverMemory>(mem: &D, csb: u64, timeout: std::time::Duration) -> Option<bool> {
    let deadline = std::time::Instant::now() + timeout;
    let mut spins = 0u32;
    loop {
        let (signal, er) = csb_status(mem, csb);
        if signal == 0 {
            return Some(er);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        spins += 1;
        if spins > 64 {
            std::thread::sleep(std::time::Duration::from_micros(50));
        } else {
            std::hint::spin_loop();
        }
    }
}
