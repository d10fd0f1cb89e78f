//! The test-bed harness: provisions images, boots QEMU with both device servers, runs
//! scenarios through the guest agent, checks them and reports. The `harness` binary
//! (`main.rs`) is a thin CLI over this library.
//!
//! Where to start reading:
//! - one scenario run, start to finish: [`run`] ([`execute`]); what a scenario is, the
//!   table of built-ins and how to add one: [`scenario`]; the steps and their checks:
//!   [`inventory`], [`sdxi_copy`], [`chmu_hot`]; scenario files (`*.toml`) and the
//!   migrator's checks: [`migration`];
//! - several scenarios, shards and time limits: [`matrix`]; what a run reports:
//!   [`report`] ([`RunResult`], JUnit), [`document`] and [`plots`] (report.md/.html);
//! - before a boot: [`provision`](mod@provision) (helpers from [`tools`], images), [`config`], [`kvm`];
//! - the VM itself (QEMU, device servers, sockets, teardown): [`vm`], its private directories
//!   [`private_dir`]; several requests in one boot: [`session`];
//! - the other commands: [`bringup`](mod@bringup) (driver bring-up, [`console`]), [`tap_bench`];
//!   faults timed by the device during a run: [`faults`];
//! - the kernel in the loop (a kernel under test, its configuration checked against what a
//!   scenario needs, guest files, gdb, a console after the run): [`kernel_loop`]; the
//!   kernel's dmatest through a dmaengine driver, a scenario with a runner of its own:
//!   [`dmatest`].

pub mod bringup;
pub mod chmu_hot;
pub mod compare;
pub mod config;
pub mod console;
pub mod dmatest;
pub mod document;
pub mod error;
pub mod faults;
pub mod inventory;
pub mod kernel_loop;
pub mod kvm;
pub mod matrix;
pub mod migration;
pub mod plots;
pub mod private_dir;
pub mod provision;
pub mod report;
pub mod reporter;
pub mod run;
pub mod scenario;
pub mod sdxi_copy;
pub mod session;
pub mod tap_bench;
pub mod tiering;
pub mod tools;
pub mod vm;

pub use bringup::{bringup, BringupReport, BringupSpec};
pub use error::RunError;
pub use images::Progress;
pub use matrix::{default_jobs, run_matrix};
pub use provision::{provision, reclaim_leftovers};
pub use report::{RunResult, Timings, RESULT_SCHEMA_VERSION};
pub use reporter::Reporter;
pub use run::execute;
pub use tap_bench::{bench_tap, TapBench};
/// Where the helper programs come from (explicit paths override finding or building them).
pub use tools::ToolPaths;
