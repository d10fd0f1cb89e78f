//! The guest agent: runs inside the test-bed guest, speaks the harness protocol on a serial
//! port and drives the emulated devices from userspace through vfio-pci.
//!
//! - [`protocol`]: the versioned JSON-lines protocol (shared with the harness).
//! - [`inventory`]: PCI functions, NUMA nodes, memory tiers from sysfs.
//! - [`sys`]: every raw system call and ioctl, behind traits with in-process test doubles.
//! - [`vfio`]: the VFIO plumbing (container, group, device, BAR mmaps).
//! - [`drivers`]: identity probes of the SDXi and CHMU functions.
//! - [`sdxi`], [`chmu`]: userspace drivers of both devices; [`hot_loops`]: the CHMU test's
//!   hot-set workloads (one load site, `rep movsb`, a pointer chase, 64 load sites).
//! - [`migrate`]: the batched tiered-memory migrator, built from [`spec`] (what to run and
//!   what is reported), [`workload`], [`pipeline`] (source -> promoter -> batcher -> mover
//!   -> report), [`sources`] (CHMU, DAMON), [`promote`] (promotion engine and batcher),
//!   [`mover`] (the batch move), [`copy`] (CPU and SDXi copy engines) and [`arena`] (pools,
//!   remapping, userfaultfd); [`bench`](mod@bench): the copy benchmark; [`kernel_tiering`]: the stock
//!   kernel's tiering (NUMA balancing in memory-tiering mode) as the baseline.

pub mod arena;
pub mod bench;
pub mod budget;
pub mod chmu;
pub mod cold;
pub mod copy;
pub mod cost_model;
pub mod demote;
pub mod drivers;
pub mod hot_loops;
pub mod inventory;
pub mod kernel_tiering;
pub mod migrate;
pub mod mover;
pub mod pingpong;
pub mod pipeline;
pub mod promote;
pub mod protocol;
pub mod sdxi;
pub mod sources;
pub mod spec;
pub mod sys;
pub mod verify;
pub mod vfio;
pub mod workload;
