//! Where a CHMU's hotlist entries (CXL 3.2 §8.2.8.8) are kept when they are not bytes of the
//! register block: a mapping the guest reads directly (`transport::hotlist_map`), or memory of
//! this process (the window of servers that cannot map it, tests).

/// Storage of the hotlist entries outside the block's bytes.
pub trait HotlistMemory: Send + std::fmt::Debug {
    /// Entry `slot` of instance `i`'s hotlist (0 outside it).
    fn read(&self, i: u8, slot: u64) -> u64;
    /// Sets entry `slot` of instance `i`'s hotlist (ignored outside it).
    fn write(&self, i: u8, slot: u64, v: u64);
    /// Zeroes every entry (device reset).
    fn clear(&self);
}

/// In-process hotlist storage.
#[derive(Debug, Default)]
pub struct VecHotlist {
    entries: std::sync::Mutex<Vec<u64>>,
    per_instance: u64,
}

impl VecHotlist {
    pub fn new(instances: u8, per_instance: u16) -> Self {
        let n = usize::from(instances) * usize::from(per_instance);
        Self {
            entries: std::sync::Mutex::new(vec![0; n]),
            per_instance: u64::from(per_instance),
        }
    }

    fn index(&self, i: u8, slot: u64) -> Option<usize> {
        (slot < self.per_instance)
            .then(|| usize::try_from(u64::from(i) * self.per_instance + slot).ok())
            .flatten()
    }
}

impl HotlistMemory for VecHotlist {
    fn read(&self, i: u8, slot: u64) -> u64 {
        let Some(k) = self.index(i, slot) else {
            return 0;
        };
        self.entries
            .lock()
            .ok()
            .and_then(|v| v.get(k).copied())
            .unwrap_or(0)
    }
    fn write(&self, i: u8, slot: u64, v: u64) {
        let Some(k) = self.index(i, slot) else { return };
        if let Some(e) = self.entries.lock().ok().as_mut().and_then(|g| g.get_mut(k)) {
            *e = v;
        }
    }
    fn clear(&self) {
        if let Ok(mut g) = self.entries.lock() {
            g.fill(0);
        }
    }
}
