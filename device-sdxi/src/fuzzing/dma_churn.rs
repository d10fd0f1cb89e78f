//! The `rings` fuzz target's DMA map mode: a data context's COPYs interleaved with DMA_MAP and
//! DMA_UNMAP of the pages they touch, through the live DMA table the server uses
//! ([`DmaSpace`], vfio-user `VFIO_USER_DMA_MAP`/`DMA_UNMAP` in QEMU
//! `docs/interop/vfio-user.rst`), checked against a model of what the guest mapped.
//!
//! Guest memory is one memfd, as QEMU's shared RAM backend gives it. The tables (contexts,
//! rings, CST_BLKs) stay mapped. Eight source IOVA pages map read-only or writable pattern
//! pages of the file; eight destination IOVA pages map any of sixteen destination file pages,
//! writable or not. All sixteen IOVA pages start mapped. The input maps, remaps and unmaps those pages, reserves COPYs (the write
//! index stored at once, vl set now or by a later step, as the Linux driver does), and rings
//! the doorbell, which runs a pass over the space as the server's workers do.
//!
//! After every pass, in ring order:
//! - a COPY that completed without error had its source mapped and its destination mapped
//!   writable at that pass, and the destination file bytes now hold the source's bytes;
//! - a COPY that completed with an error had a page of either side unmapped (or a read-only
//!   destination); it stops the context, later descriptors do not run, and the context is
//!   restarted the way the Linux driver recovers a channel (admin CXT_STOP, SYNC, CXT_START);
//! - every validated COPY before the first slot still without vl ran, none after it;
//! - no file byte changed that no completed (or failed) COPY of that pass could write: in
//!   particular nothing reaches a page after its unmap returned.
//!
//! Left out: concurrent passes and maps (the server's threads; covered by the socket tests
//! in `tests/dma_ordering.rs`), and maps that overlap the tables.

use super::NoIrq;
use crate::core::{Engine, EngineOptions};
use crate::driver::{self, csb_status, Driver, Mmio, Reservation};
use crate::mem::{AkeyEnt, CxtState};
use crate::regs::{self, SdxiConfig};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};
use vfio_device::dma::{HostMap, MapSpec};
use vfio_device::dma_space::DmaSpace;

const PAGE: u64 = 4096;
/// Tables: file bytes [0, TABLES_SIZE) at IOVA TABLES, always mapped.
const TABLES: u64 = 0x10_0000;
const TABLES_SIZE: u64 = 128 << 10;
const SRC_IOVA: u64 = 0x4000_0000;
const DST_IOVA: u64 = 0x8000_0000;
const SRC_PAGES: u64 = 8;
const DST_IOVA_PAGES: u64 = 8;
const DST_FILE_PAGES: u64 = 16;
const SRC_FILE: u64 = TABLES_SIZE;
const DST_FILE: u64 = SRC_FILE + SRC_PAGES * PAGE;
const FILE_SIZE: u64 = DST_FILE + DST_FILE_PAGES * PAGE;
/// The data context (context 0 is the admin context).
const CXT: u16 = 1;
const RING: u32 = 64;

/// The data part's initial bytes.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| crate::fuzzing::xorshift_bytes((FILE_SIZE - SRC_FILE) as usize, 0x5eed))
}

/// The guest RAM file with its initial contents (zeroed tables, the pattern behind them): one
/// memfd per thread, reset for each input, since creating and freeing 224 KiB of shared memory
/// per input would cost more than the input's own work.
fn guest_ram() -> Option<(File, Arc<HostMap>)> {
    thread_local! {
        static RAM: std::cell::OnceCell<Option<(File, Arc<HostMap>)>> = const { std::cell::OnceCell::new() };
    }
    RAM.with(|r| {
        let (file, view) = r
            .get_or_init(|| {
                let file = vfio_device::dma::memfd(c"fuzz-ram", FILE_SIZE).ok()?;
                let view = HostMap::file(file.as_raw_fd(), FILE_SIZE as usize, true).ok()?;
                Some((file, Arc::new(view)))
            })
            .as_ref()?;
        // SAFETY: the view maps the whole FILE_SIZE-byte file writable; no space maps the file
        // between inputs, so nothing else reaches these bytes now.
        let bytes = unsafe { std::slice::from_raw_parts_mut(view.as_ptr(), FILE_SIZE as usize) };
        bytes[..SRC_FILE as usize].fill(0);
        bytes[SRC_FILE as usize..].copy_from_slice(pattern());
        Some((file.try_clone().ok()?, Arc::clone(view)))
    })
}

/// One IOVA page's map: which file page backs it, and whether it is writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Map {
    file_page: u64,
    writable: bool,
}

/// A reserved COPY.
#[derive(Debug)]
struct Copy {
    r: Reservation,
    csb: u64,
    src: u64,
    dst: u64,
    len: u64,
    valid: bool,
}

/// The engine as the driver helper reaches it: registers, and doorbells that run a pass.
struct Port<'a>(&'a Engine<DmaSpace, NoIrq>, &'a DmaSpace);

impl Mmio for Port<'_> {
    fn read64(&mut self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.0.mmio_read(offset, &mut b);
        u64::from_le_bytes(b)
    }
    fn write64(&mut self, offset: u64, value: u64) {
        self.0.mmio_write(offset, &value.to_le_bytes());
    }
    fn doorbell(&mut self, cxt: u16, _value: u64) {
        if self.0.doorbell(cxt) {
            let (e, space) = (self.0, self.1);
            space.pass(|| {
                for k in e.process(cxt) {
                    e.process(k);
                }
            });
        }
    }
}

/// Software's side: the guest's maps, its ring, and what the file must hold.
struct ChurnModel {
    space: Arc<DmaSpace>,
    file: File,
    /// The whole file, for the checks.
    view: Arc<HostMap>,
    e: Engine<DmaSpace, NoIrq>,
    drv: Driver,
    src: [Option<Map>; SRC_PAGES as usize],
    dst: [Option<Map>; DST_IOVA_PAGES as usize],
    /// Expected bytes of the data part of the file (from SRC_FILE on).
    shadow: Vec<u8>,
    pending: Vec<Copy>,
    /// Scratch CST_BLK for the admin requests of a restart.
    admin_csb: u64,
}

impl ChurnModel {
    fn new() -> Option<Self> {
        let (file, view) = guest_ram()?;
        let shadow = pattern().to_vec();
        let space = Arc::new(DmaSpace::default());
        space
            .map(&MapSpec {
                iova: TABLES,
                size: TABLES_SIZE,
                file: &file,
                file_offset: 0,
                writable: true,
            })
            .ok()?;
        let mut drv = Driver::new(&*space, TABLES, TABLES_SIZE).ok()?;
        for id in 0..=CXT {
            drv.add_context(&*space, id, RING, &[AkeyEnt::new(None, 0)], CxtState::Run)
                .ok()?;
        }
        let admin_csb = drv.alloc(32, 32).ok()?;
        let cfg = SdxiConfig {
            max_cxt: 7,
            ..SdxiConfig::default()
        };
        let e = Engine::new(cfg, NoIrq, EngineOptions::default());
        e.set_memory(Some(Arc::clone(&space)));
        e.mmio_write(regs::MMIO_CXT_L2, &drv.l2.to_le_bytes());
        e.mmio_write(
            regs::MMIO_CTL0,
            &(regs::FnRequest::Active as u64).to_le_bytes(),
        );
        let mut m = Self {
            space,
            file,
            view,
            e,
            drv,
            src: [None; SRC_PAGES as usize],
            dst: [None; DST_IOVA_PAGES as usize],
            shadow,
            pending: Vec::new(),
            admin_csb,
        };
        // The guest starts with every page mapped at its own file page: sources read-only,
        // destinations writable; the input then unmaps and remaps.
        for page in 0..8u8 {
            m.map(false, page | page << 4, 0);
            m.map(true, page | page << 4, 1);
        }
        Some(m)
    }

    /// Maps (or remaps) one source or destination IOVA page as `arg` says; read-only when
    /// `ro` is a multiple of 8.
    fn map(&mut self, dst: bool, arg: u8, ro: u8) {
        let page = u64::from(arg & 7);
        let writable = !ro.is_multiple_of(8);
        let (iova, file_page) = if dst {
            (DST_IOVA + page * PAGE, u64::from(arg >> 4) % DST_FILE_PAGES)
        } else {
            (SRC_IOVA + page * PAGE, u64::from(arg >> 4) % SRC_PAGES)
        };
        let file_offset = if dst { DST_FILE } else { SRC_FILE } + file_page * PAGE;
        self.space.unmap(iova, PAGE);
        let spec = MapSpec {
            iova,
            size: PAGE,
            file: &self.file,
            file_offset,
            writable,
        };
        let m = self.space.map(&spec).ok().map(|()| Map {
            file_page,
            writable,
        });
        let slot = if dst {
            &mut self.dst[page as usize]
        } else {
            &mut self.src[page as usize]
        };
        *slot = m;
    }

    /// Unmaps one page, or (one time in eight) a run of up to four pages of one side in a
    /// single DMA_UNMAP.
    fn unmap(&mut self, arg: u8) {
        let first = u64::from(arg & 7);
        let n = if arg & 0x70 == 0x70 { 4 } else { 1 }.min(8 - first);
        let (iova, maps) = if arg & 8 != 0 {
            (DST_IOVA, &mut self.dst[..])
        } else {
            (SRC_IOVA, &mut self.src[..])
        };
        self.space.unmap(iova + first * PAGE, n * PAGE);
        maps[first as usize..(first + n) as usize].fill(None);
    }

    /// Reserves a COPY between the two sides (it may cross into the next IOVA page); its vl
    /// is set now or by a later [`Self::validate`]. False when CST_BLK space ran out.
    fn reserve(&mut self, a: u8, b: u8) -> bool {
        let Some(r) = self.drv.reserve(&*self.space, CXT, 1) else {
            return true;
        };
        let Ok(csb) = self.drv.csb(&*self.space, 1) else {
            return false;
        };
        let len = 1 + u64::from(b) * 61 % PAGE;
        let src = SRC_IOVA + u64::from(a & 7) * PAGE + u64::from(a >> 3) * 127 % PAGE;
        let dst = DST_IOVA + u64::from(b & 7) * PAGE + u64::from(b >> 3) * 131 % PAGE;
        // Stay inside the eight pages of each side.
        let len = len
            .min(SRC_IOVA + SRC_PAGES * PAGE - src)
            .min(DST_IOVA + DST_IOVA_PAGES * PAGE - dst);
        let valid = a & 0x80 == 0;
        r.write(
            &*self.space,
            0,
            &driver::copy(src, dst, len, Some(csb), false),
            valid,
        );
        self.pending.push(Copy {
            r,
            csb,
            src,
            dst,
            len,
            valid,
        });
        true
    }

    /// Sets vl on a pending COPY that has none yet.
    fn validate(&mut self, arg: u8) {
        let waiting: Vec<usize> = (0..self.pending.len())
            .filter(|i| !self.pending[*i].valid)
            .collect();
        if let Some(&i) = waiting.get(usize::from(arg) % waiting.len().max(1)) {
            self.pending[i].r.make_valid(&*self.space, 0);
            self.pending[i].valid = true;
        }
    }

    /// The file offsets behind `len` bytes at `iova`, or None when a page is unmapped (or
    /// not writable, with `write`).
    fn translate(&self, iova: u64, len: u64, write: bool) -> Option<Vec<(u64, u64)>> {
        let (base, maps, file) = if iova >= DST_IOVA {
            (DST_IOVA, &self.dst[..], DST_FILE)
        } else {
            (SRC_IOVA, &self.src[..], SRC_FILE)
        };
        let mut out = Vec::new();
        let (mut at, end) = (iova, iova + len);
        while at < end {
            let page = (at - base) / PAGE;
            let m = (*maps.get(page as usize)?)?;
            if write && !m.writable {
                return None;
            }
            let chunk = (end - at).min(PAGE - (at - base) % PAGE);
            out.push((file + m.file_page * PAGE + (at - base) % PAGE, chunk));
            at += chunk;
        }
        Some(out)
    }

    /// Rings the doorbell; the pass runs over the live space, then the model checks it.
    fn doorbell(&mut self) -> bool {
        let value = self.pending.last().map_or(0, |c| c.r.dbval());
        Port(&self.e, &self.space).doorbell(CXT, value);
        self.check()
    }

    /// Checks a pass (module doc); returns false when the context could not be restarted
    /// for want of CST_BLK space.
    fn check(&mut self) -> bool {
        let (mut stalled, mut failed, mut done) = (false, false, 0);
        for i in 0..self.pending.len() {
            let c = &self.pending[i];
            let (signal, er) = csb_status(&*self.space, c.csb);
            if stalled || failed || !c.valid {
                assert_eq!(signal, 1, "a COPY ran after an error or a slot without vl");
                stalled = true;
                continue;
            }
            assert_eq!(signal, 0, "a validated COPY before any stall did not run");
            let src = self.translate(c.src, c.len, false);
            let dst = self.translate(c.dst, c.len, true);
            if er {
                assert!(
                    src.is_none() || dst.is_none(),
                    "a COPY between mapped pages failed"
                );
                // A failed COPY may have written part of what it could reach of its
                // destination: the writable pages mapped there.
                for (off, len) in self.reachable(c.dst, c.len) {
                    self.accept_file(off, len);
                }
                failed = true;
            } else {
                let (Some(src), Some(dst)) = (src, dst) else {
                    panic!("a COPY touching an unmapped or read-only page completed");
                };
                self.apply_copy(&src, &dst);
            }
            done += 1;
        }
        assert!(
            self.data() == &self.shadow[..],
            "guest memory changed outside what the COPYs could write"
        );
        if failed {
            self.pending.clear();
            return self.restart();
        }
        self.pending.drain(..done);
        true
    }

    /// The file ranges of the writable pages mapped under `len` bytes at `iova`.
    fn reachable(&self, iova: u64, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let (mut at, end) = (iova, iova + len);
        while at < end {
            let chunk = (end - at).min(PAGE - at % PAGE);
            out.extend(self.translate(at, chunk, true).unwrap_or_default());
            at += chunk;
        }
        out
    }

    /// The file's data part (from SRC_FILE on) as it is now.
    fn data(&self) -> &[u8] {
        // SAFETY: the view maps the whole FILE_SIZE-byte file and lives as long as `self`;
        // nothing writes the file while the model reads it (passes run on this thread).
        unsafe {
            std::slice::from_raw_parts(
                self.view.as_ptr().add(SRC_FILE as usize),
                (FILE_SIZE - SRC_FILE) as usize,
            )
        }
    }

    /// The model's copy: source file bytes to destination file bytes.
    fn apply_copy(&mut self, src: &[(u64, u64)], dst: &[(u64, u64)]) {
        let mut bytes = Vec::new();
        for (off, len) in src {
            let o = (off - SRC_FILE) as usize;
            bytes.extend_from_slice(&self.shadow[o..o + *len as usize]);
        }
        let mut at = 0usize;
        for (off, len) in dst {
            let o = (off - SRC_FILE) as usize;
            let n = *len as usize;
            self.shadow[o..o + n].copy_from_slice(&bytes[at..at + n]);
            at += n;
        }
    }

    /// Takes the file's bytes as expected (a failed COPY's partial writes).
    fn accept_file(&mut self, off: u64, len: u64) {
        let o = (off - SRC_FILE) as usize;
        let n = len as usize;
        let now = self.data()[o..o + n].to_vec();
        self.shadow[o..o + n].copy_from_slice(&now);
    }

    /// Recovers the data context after an error as the Linux driver does; it must work.
    fn restart(&mut self) -> bool {
        let r = driver::restart_context(
            &mut Port(&self.e, &self.space),
            &*self.space,
            &mut self.drv,
            CXT,
            self.admin_csb,
            std::time::Duration::from_millis(20),
        );
        match r {
            Ok(()) => true,
            Err(driver::InitError::Memory(_)) => false,
            Err(e) => panic!("context restart after an error failed: {e}"),
        }
    }
}

/// DMA maps and unmaps interleaved with COPYs and doorbells; see the module doc.
pub fn ring_dma_churn(data: &[u8]) {
    let Some(mut m) = ChurnModel::new() else {
        return;
    };
    let mut bytes = data.chunks_exact(3);
    for op in bytes.by_ref() {
        let ok = match op[0] % 8 {
            0 => {
                m.map(false, op[1], op[2]);
                true
            }
            1 | 2 => {
                m.map(true, op[1], op[2]);
                true
            }
            3 => {
                m.unmap(op[1]);
                true
            }
            4 | 5 => m.reserve(op[1], op[2]),
            6 => {
                m.validate(op[1]);
                true
            }
            _ => m.doorbell(),
        };
        if !ok {
            return;
        }
    }
    for i in 0..m.pending.len() {
        if !m.pending[i].valid {
            m.pending[i].r.make_valid(&*m.space, 0);
            m.pending[i].valid = true;
        }
    }
    m.doorbell();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_unmaps_between_doorbells_never_let_a_copy_reach_an_unmapped_page() {
        for i in 0..150u64 {
            ring_dma_churn(&crate::fuzzing::xorshift_bytes(
                900,
                0xd3a_0000 + i.wrapping_mul(0x9e37_79b9),
            ));
        }
    }

    /// A fixed sequence: a COPY runs between mapped pages; the destination page is then
    /// unmapped before the next doorbell, so the next COPY to it fails and writes nothing.
    #[test]
    fn copy_after_unmap_fails_and_the_old_page_keeps_its_bytes() {
        let mut m = ChurnModel::new().expect("model");
        m.map(true, 0x10, 1);
        assert!(m.reserve(0, 0x08));
        assert!(m.doorbell());
        assert!(m.pending.is_empty(), "the first COPY ran");
        let before = m.shadow.clone();
        m.unmap(0x08);
        assert_eq!(m.dst[0], None);
        assert!(m.reserve(0, 0x08));
        assert!(m.pending.len() == 1);
        let csb = m.pending[0].csb;
        assert!(m.doorbell());
        assert_eq!(csb_status(&*m.space, csb), (0, true), "the COPY failed");
        assert!(m.shadow == before, "nothing written");
    }
}
