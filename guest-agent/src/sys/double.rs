//! In-process test doubles of the [`super`] traits: a register space in memory
//! ([`MemBar`]), a NUMA system that keeps each page's node in a table ([`FakeMemory`]) and a
//! write-protect handle that records what it was asked ([`FakeWriteProtect`]).

use super::mm::MemorySys;
use super::uffd::WriteProtect;
use super::{checked, Bar};
use std::collections::BTreeMap;
use std::io::Result;
use std::sync::{Arc, Mutex, MutexGuard};

/// Called after every write of a [`MemBar`] with the memory, the offset and the value: the
/// device's side effects.
pub type WriteHook = Box<dyn Fn(&mut [u8], usize, u64) + Send + Sync>;

/// A register space in memory; accesses are checked as a BAR mapping's are.
pub struct MemBar {
    mem: Mutex<Vec<u8>>,
    hook: Option<WriteHook>,
}

impl std::fmt::Debug for MemBar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBar").field("len", &self.len()).finish()
    }
}

impl MemBar {
    pub fn new(len: usize) -> Self {
        Self {
            mem: Mutex::new(vec![0; len]),
            hook: None,
        }
    }

    pub fn with_hook(mut self, hook: WriteHook) -> Self {
        self.hook = Some(hook);
        self
    }

    pub fn mem(&self) -> MutexGuard<'_, Vec<u8>> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Little-endian `width`-byte value at `off` (test set-up and inspection).
    pub fn get(&self, off: usize, width: usize) -> u64 {
        let m = self.mem();
        let mut b = [0u8; 8];
        b[..width].copy_from_slice(&m[off..off + width]);
        u64::from_le_bytes(b)
    }

    pub fn set(&self, off: usize, width: usize, v: u64) {
        self.mem()[off..off + width].copy_from_slice(&v.to_le_bytes()[..width]);
    }

    fn read(&self, off: usize, width: usize) -> Option<u64> {
        let len = self.len();
        checked(off, width, len).map(|o| self.get(o, width))
    }

    fn write(&self, off: usize, width: usize, v: u64) -> bool {
        if checked(off, width, self.len()).is_none() {
            return false;
        }
        let mut m = self.mem();
        m[off..off + width].copy_from_slice(&v.to_le_bytes()[..width]);
        if let Some(h) = &self.hook {
            h(&mut m, off, v);
        }
        true
    }
}

impl Bar for MemBar {
    fn read16(&self, off: usize) -> Option<u16> {
        self.read(off, 2).map(|v| v as u16)
    }
    fn read32(&self, off: usize) -> Option<u32> {
        self.read(off, 4).map(|v| v as u32)
    }
    fn read64(&self, off: usize) -> Option<u64> {
        self.read(off, 8)
    }
    fn write16(&self, off: usize, v: u16) -> bool {
        self.write(off, 2, u64::from(v))
    }
    fn write32(&self, off: usize, v: u32) -> bool {
        self.write(off, 4, u64::from(v))
    }
    fn write64(&self, off: usize, v: u64) -> bool {
        self.write(off, 8, v)
    }
    fn len(&self) -> usize {
        self.mem().len()
    }
}

/// A shared register space: the driver under test owns one handle, the test another.
impl<T: Bar + Sync> Bar for Arc<T> {
    fn read16(&self, off: usize) -> Option<u16> {
        (**self).read16(off)
    }
    fn read32(&self, off: usize) -> Option<u32> {
        (**self).read32(off)
    }
    fn read64(&self, off: usize) -> Option<u64> {
        (**self).read64(off)
    }
    fn write16(&self, off: usize, v: u16) -> bool {
        (**self).write16(off, v)
    }
    fn write32(&self, off: usize, v: u32) -> bool {
        (**self).write32(off, v)
    }
    fn write64(&self, off: usize, v: u64) -> bool {
        (**self).write64(off, v)
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}

/// What the write-protect double was asked, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WpCall {
    Register(usize, usize),
    Protect(usize, usize, bool),
    Wake(usize, usize),
}

/// A write-protect handle that records its calls (and protects nothing).
#[derive(Debug, Default, Clone)]
pub struct FakeWriteProtect {
    pub calls: Arc<Mutex<Vec<WpCall>>>,
}

impl FakeWriteProtect {
    fn log(&self, c: WpCall) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }
}

impl WriteProtect for FakeWriteProtect {
    fn register(&self, start: *mut u8, len: usize) -> Result<()> {
        self.log(WpCall::Register(start as usize, len));
        Ok(())
    }
    fn protect(&self, start: *mut u8, len: usize, on: bool) -> Result<()> {
        self.log(WpCall::Protect(start as usize, len, on));
        Ok(())
    }
    fn wake(&self, start: *mut u8, len: usize) -> Result<()> {
        self.log(WpCall::Wake(start as usize, len));
        Ok(())
    }
    fn drain(&self) -> u64 {
        0
    }
}

/// A NUMA system in a table: `mbind` sets the node of every page of the range,
/// `move_pages` reads or sets it (pages never bound are on node 0, as on a one-node host).
#[derive(Debug, Default, Clone)]
pub struct FakeMemory {
    /// Page address -> node.
    pub nodes: Arc<Mutex<BTreeMap<usize, i32>>>,
    pub wp: FakeWriteProtect,
}

impl FakeMemory {
    fn table(&self) -> MutexGuard<'_, BTreeMap<usize, i32>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemorySys for FakeMemory {
    fn mbind(&self, addr: *mut u8, len: usize, node: u32) -> Result<()> {
        let mut t = self.table();
        for p in (addr as usize..addr as usize + len).step_by(4096) {
            t.insert(p, node as i32);
        }
        Ok(())
    }
    fn unbind(&self, _addr: *mut u8, _len: usize) -> Result<()> {
        Ok(())
    }
    fn move_pages(&self, pages: &[*mut u8], node: Option<i32>) -> Result<Vec<i32>> {
        let mut t = self.table();
        Ok(pages
            .iter()
            .map(|&p| {
                let page = p as usize & !4095;
                match node {
                    Some(n) => {
                        t.insert(page, n);
                        n
                    }
                    None => t.get(&page).copied().unwrap_or(0),
                }
            })
            .collect())
    }
    fn write_protect(&self) -> Result<Box<dyn WriteProtect>> {
        Ok(Box::new(self.wp.clone()))
    }
}
