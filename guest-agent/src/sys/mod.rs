//! Every raw system call and ioctl of the guest agent, each `unsafe` with its reason, and the
//! traits the drivers and the migrator reach them through, so both run in unit tests against
//! in-process doubles (`double`, test builds only).
//!
//! - [`vfio`]: the VFIO container, group and device ioctls and BAR mmaps (Linux
//!   `include/uapi/linux/vfio.h`, `Documentation/driver-api/vfio.rst`);
//! - [`uffd`]: userfaultfd(2) in write-protect mode (`include/uapi/linux/userfaultfd.h`,
//!   `Documentation/admin-guide/mm/userfaultfd.rst`);
//! - [`mm`]: mmap(2), memfd_create(2), mlock(2), mbind(2), move_pages(2), get_mempolicy(2)
//!   (`include/uapi/linux/mempolicy.h`, `Documentation/admin-guide/mm/numa_memory_policy.rst`)
//!   and the thread CPU clock;
//! - [`event`]: eventfd(2) and poll(2) for MSI-X vectors, and the serial port's raw mode
//!   (termios(3));
//! - [`fs`]: mount(2) of debugfs, for NUMA balancing's knobs.
//!
//! The traits: [`Bar`] (a device's register space: a BAR mapping, or memory in a test),
//! [`mm::MemorySys`] (memory policy and page migration) and [`uffd::WriteProtect`]. Each
//! ioctl number is written once with `vmm-sys-util`'s macros and checked in this module's
//! tests against the value the uapi header gives, written out by hand.

pub mod event;
pub mod fs;
pub mod mm;
pub mod uffd;
pub mod vfio;

#[cfg(test)]
pub mod double;

/// The calling thread's last OS error.
pub fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// A device's register space (a BAR): naturally aligned accesses of 2, 4 or 8 bytes; an
/// access outside the space or misaligned is refused (`None` / `false`).
pub trait Bar: std::fmt::Debug + Send {
    fn read16(&self, off: usize) -> Option<u16>;
    fn read32(&self, off: usize) -> Option<u32>;
    fn read64(&self, off: usize) -> Option<u64>;
    fn write16(&self, off: usize, v: u16) -> bool;
    fn write32(&self, off: usize, v: u32) -> bool;
    fn write64(&self, off: usize, v: u64) -> bool;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The offset of an aligned access of `width` bytes at `off` inside `len` bytes.
pub(crate) fn checked(off: usize, width: usize, len: usize) -> Option<usize> {
    (off.is_multiple_of(width) && off.checked_add(width)? <= len).then_some(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_refuses_misaligned_and_outside_accesses() {
        assert_eq!(checked(8, 8, 16), Some(8));
        assert_eq!(checked(12, 8, 16), None, "misaligned");
        assert_eq!(checked(16, 8, 16), None, "past the end");
        assert_eq!(checked(usize::MAX - 1, 2, usize::MAX), None, "overflow");
    }
}
