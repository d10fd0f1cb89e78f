//! Decides whether KVM can run the guest, by running a tiny guest through `kvm-ioctls`.
//!
//! Opening /dev/kvm is not enough: on some hosts (e.g. `kvm_pvm`) KVM exists but ordinary
//! guests fail with emulation errors in the kernel's early code. The probe runs what failed
//! there: a 64-bit long-mode guest that executes a VEX-encoded BMI2 instruction (`shlx`) and
//! reports the result through an I/O port. KVM is used only when the result is right, within
//! a deadline.

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit};
use std::sync::mpsc;
use std::time::Duration;

const MEM_SIZE: usize = 0x10000;
const CODE: u64 = 0x1000;
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
const PROBE_PORT: u16 = 0x10;

/// mov eax, 5; mov ecx, 3; shlx eax, eax, ecx (eax = 40); out 0x10, al; hlt
const GUEST_CODE: &[u8] = &[
    0xb8, 0x05, 0x00, 0x00, 0x00, // mov eax, 5
    0xb9, 0x03, 0x00, 0x00, 0x00, // mov ecx, 3
    0xc4, 0xe2, 0x71, 0xf7, 0xc0, // shlx eax, eax, ecx
    0xe6, 0x10, // out 0x10, al
    0xf4, // hlt
];
const EXPECTED: u8 = 40;

/// Runs the probe; Ok(()) when KVM ran the guest correctly.
pub fn probe(deadline: Duration) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(run_guest());
        })
        .map_err(|e| format!("cannot start the probe thread: {e}"))?;
    rx.recv_timeout(deadline)
        .map_err(|_| format!("the probe guest did not finish within {deadline:?}"))?
}

fn run_guest() -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // SAFETY: an anonymous private mapping, owned here and unmapped at the end.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err("mmap of probe memory failed".into());
    }
    let result = (|| {
        // SAFETY: `mem` is a fresh MEM_SIZE mapping, exclusively ours until munmap below.
        let guest = unsafe { std::slice::from_raw_parts_mut(mem.cast::<u8>(), MEM_SIZE) };
        guest[CODE as usize..CODE as usize + GUEST_CODE.len()].copy_from_slice(GUEST_CODE);
        // PML4[0] -> PDPT[0] -> PD[0] = 2 MiB identity page (present, writable, PS).
        guest[PML4 as usize..PML4 as usize + 8].copy_from_slice(&(PDPT | 0x3).to_le_bytes());
        guest[PDPT as usize..PDPT as usize + 8].copy_from_slice(&(PD | 0x3).to_le_bytes());
        guest[PD as usize..PD as usize + 8].copy_from_slice(&0x83u64.to_le_bytes());
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem as u64,
            flags: 0,
        };
        // SAFETY: the region describes memory that stays mapped while the VM runs.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        let mut vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x8,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment {
            selector: 0x10,
            type_: 0x3,
            l: 0,
            db: 1,
            ..code
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.ss = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.cr3 = PML4;
        sregs.cr4 |= 1 << 5; // PAE
        sregs.cr0 |= 1 | (1 << 31); // PE, PG
        sregs.efer |= (1 << 8) | (1 << 10); // LME, LMA
        vcpu.set_sregs(&sregs)
            .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        regs.rip = CODE;
        regs.rflags = 2;
        vcpu.set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        let mut seen = None;
        for _ in 0..16 {
            match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
                VcpuExit::IoOut(port, d) if port == PROBE_PORT => seen = d.first().copied(),
                VcpuExit::Hlt => break,
                other => return Err(format!("unexpected exit {other:?}")),
            }
        }
        match seen {
            Some(EXPECTED) => Ok(()),
            other => Err(format!(
                "probe guest reported {other:?}, expected {EXPECTED}"
            )),
        }
    })();
    // SAFETY: unmapping exactly what mmap returned; the VM using it is gone or unused.
    unsafe { libc::munmap(mem, MEM_SIZE) };
    result
}
