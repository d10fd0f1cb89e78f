//! A guest that maps its memory page by page, through the real socket: QEMU with a virtual
//! IOMMU sends one DMA_MAP per 4 KiB page, each carrying the RAM file's fd. Over a million
//! page-granular maps and as many unmaps reach the real `sdxi-server`; its open fds and memory
//! mappings stay bounded by the number of backing files, and no map is refused.
//!
//! The maps are sent the way QEMU sends them inside a memory transaction: without waiting for
//! each reply (`VFIO_USER_F_NO_REPLY`, QEMU `docs/interop/vfio-user.rst`), in windows, each
//! window closed by one message that is answered.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;
use vfio_device::testing::ServerProcess;

const DMA_MAP: u16 = 2;
const DMA_UNMAP: u16 = 3;
const NO_REPLY: u32 = 1 << 4;
/// Pages of the guest RAM file (1 GiB).
const PAGES: u64 = 1 << 18;
/// Messages sent before waiting for an answer (bounded: fds in flight count against limits).
const WINDOW: u64 = 512;
const BASE: u64 = 0x40_0000_0000;

fn header(id: u16, command: u16, size: u32, flags: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(size as usize);
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&command.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// Sends one DMA_MAP of `size` bytes of `fd` at `offset` to `iova` (read-write), with the fd
/// attached (SCM_RIGHTS).
fn send_map(s: &UnixStream, id: u16, fd: i32, offset: u64, iova: u64, size: u64) {
    let mut m = header(id, DMA_MAP, 48, NO_REPLY);
    m.extend_from_slice(&32u32.to_le_bytes());
    m.extend_from_slice(&3u32.to_le_bytes());
    for v in [offset, iova, size] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    let mut iov = libc::iovec {
        iov_base: m.as_mut_ptr().cast(),
        iov_len: m.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(4) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control holds CMSG_SPACE(4) bytes, so the first header and its 4-byte
    // payload fit.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
    }
    // SAFETY: sendmsg with the msghdr built above, all buffers alive for the call.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
    assert_eq!(
        n,
        m.len() as isize,
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends one DMA_UNMAP; with `reply`, waits for its answer (so every earlier message has been
/// handled).
fn send_unmap(s: &mut UnixStream, id: u16, iova: u64, size: u64, reply: bool) {
    let flags = if reply { 0 } else { NO_REPLY };
    let mut m = header(id, DMA_UNMAP, 40, flags);
    m.extend_from_slice(&24u32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&iova.to_le_bytes());
    m.extend_from_slice(&size.to_le_bytes());
    s.write_all(&m).expect("send DMA_UNMAP");
    if reply {
        let mut r = [0u8; 40];
        s.read_exact(&mut r).expect("DMA_UNMAP reply");
        let flags = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
        assert_eq!(flags & (1 << 5), 0, "DMA_UNMAP answered with an error");
    }
}

fn server_pid(counters: &Path) -> u32 {
    let needle = counters.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .expect("the server process")
}

/// (open fds, memory mappings) of a process.
fn footprint(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let maps =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).map_or(0, |m| m.lines().count());
    (fds, maps)
}

/// A permutation of 0..PAGES (multiplicative, odd factor): neighbouring pages land far apart,
/// so no two maps merge.
fn scatter(i: u64, round: u64) -> u64 {
    (i * (2 * round + 0x9e37_79b1) + round * 7919) % PAGES
}

#[test]
fn a_million_page_maps_and_unmaps_keep_fds_and_mappings_bounded() {
    let srv = ServerProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_sdxi-server")),
        &["--max-clients", "1"],
    )
    .expect("spawn sdxi-server");
    let ram = {
        let name = std::ffi::CString::new("guest-ram").expect("name");
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: a fresh fd we own.
        let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(PAGES * 4096).expect("size");
        f
    };
    let mut s = UnixStream::connect(&srv.socket).expect("connect");
    let pid = server_pid(&srv.counters);
    // Once a message is answered, the server is up (threads, doorbell page, connection).
    send_unmap(&mut s, 0, 0x1000, 0x1000, true);
    let idle = footprint(pid);
    let mut per_round = Vec::new();
    let rounds = 4u64;
    let (mut map_time, mut unmap_time) = (0f64, 0f64);
    let mut peak = idle;
    let mut id = 0u16;
    for round in 0..rounds {
        let t = Instant::now();
        for i in 0..PAGES {
            id = id.wrapping_add(1);
            let iova = BASE + scatter(i, round) * 4096;
            send_map(&s, id, ram.as_raw_fd(), i * 4096, iova, 4096);
            if i % WINDOW == WINDOW - 1 {
                // An answered message closes the window (an unmap of nothing).
                send_unmap(&mut s, id, 0x1000, 0x1000, true);
            }
        }
        map_time += t.elapsed().as_secs_f64();
        let f = footprint(pid);
        per_round.push(f);
        peak = (peak.0.max(f.0), peak.1.max(f.1));
        let t = Instant::now();
        for i in 0..PAGES {
            id = id.wrapping_add(1);
            let reply = i % WINDOW == WINDOW - 1 || i == PAGES - 1;
            send_unmap(&mut s, id, BASE + scatter(i, round) * 4096, 4096, reply);
        }
        unmap_time += t.elapsed().as_secs_f64();
    }
    let n = (rounds * PAGES) as f64;
    eprintln!(
        "{} page maps at {:.0}/s, {} page unmaps at {:.0}/s; server fds {} idle, {} peak; \
         mappings {} idle, {} peak",
        n,
        n / map_time,
        n,
        n / unmap_time,
        idle.0,
        peak.0,
        idle.1,
        peak.1
    );
    drop(s);
    let c = srv.finish().expect("counters");
    eprintln!("server's DMA counters: {}", c["dma"]);
    assert_eq!(c["transport"]["dma_maps"], rounds * PAGES);
    assert_eq!(c["transport"]["dma_map_failures"], 0, "{c:#}");
    let t = &c["dma"]["table"];
    assert_eq!(
        t["peak_extents"], PAGES,
        "scattered maps do not merge: {c:#}"
    );
    assert_eq!(t["peak_file_mappings"], 1, "{c:#}");
    assert_eq!(
        t["mmaps"], 1,
        "one mmap of the RAM file for every map: {c:#}"
    );
    eprintln!("footprint after each round's maps: {per_round:?}");
    // The RAM file's one mapping and the allocator's heaps for the table; nothing per map.
    assert!(
        peak.0 <= idle.0 + 1,
        "fds grew with the maps: {idle:?} -> {peak:?}"
    );
    assert!(
        peak.1 <= idle.1 + 64,
        "mappings grew with the maps: {idle:?} -> {peak:?}"
    );
    let (first, last) = (per_round[0], per_round[per_round.len() - 1]);
    assert!(
        last.1 <= first.1 + 8,
        "mappings grow round after round: {per_round:?}"
    );
}
