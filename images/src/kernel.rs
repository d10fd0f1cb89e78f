//! Guest kernel from Debian: the uncompressed `vmlinux` (PVH entry, saves the 3 s zstd
//! decompression under TCG) and kernel modules resolved through their `.modinfo` `depends=`.

use crate::ImagesError;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Extracts the kernel ELF from a bzImage (Linux `Documentation/arch/x86/boot.rst`).
///
/// The setup header gives the payload's offset (0x248) and length (0x24c) relative to the
/// protected-mode code, which starts after (setup_sects + 1) sectors. The payload is
/// compressed with what the kernel's `CONFIG_KERNEL_*` chose: zstd (Debian's kernels), gzip
/// (the kernel's default), xz or lzma are decompressed here; bzip2, lz4 and lzo are refused
/// with their name.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ImagesError> {
    let bad = |why: &str| ImagesError::Kernel(format!("bzImage: {why}"));
    let rd32 = |o| Le(bzimage).u32(o);
    if !is_bzimage(bzimage) {
        return Err(bad("no HdrS setup header"));
    }
    let setup_sects = match bzimage.get(0x1f1).copied() {
        Some(0) => 4,
        Some(n) => usize::from(n),
        None => return Err(bad("truncated")),
    };
    let pm_start = (setup_sects + 1) * 512;
    let off = rd32(0x248).ok_or_else(|| bad("truncated header"))? as usize;
    let len = rd32(0x24c).ok_or_else(|| bad("truncated header"))? as usize;
    let start = pm_start
        .checked_add(off)
        .ok_or_else(|| bad("payload offset overflows"))?;
    let payload = bzimage
        .get(start..start.saturating_add(len))
        .ok_or_else(|| bad("payload outside the file"))?;
    let out = decompress_payload(payload).map_err(|why| bad(&why))?;
    if out.get(..4) != Some(b"\x7fELF") {
        return Err(bad("decompressed payload is not an ELF file"));
    }
    Ok(out)
}

/// True if `image` starts like a bzImage (the `HdrS` setup-header magic at 0x202).
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(0x202..0x206) == Some(b"HdrS")
}

/// True if `image` is an ELF file (an uncompressed `vmlinux`).
pub fn is_elf(image: &[u8]) -> bool {
    image.get(..4) == Some(b"\x7fELF")
}

/// Largest kernel ELF a payload may decompress to.
const MAX_VMLINUX: usize = 2 << 30;

/// Decompresses a bzImage payload by its magic; the kernel's build appends the uncompressed
/// size (4 bytes) after the compressed stream, which each decoder here ignores or is cut off.
fn decompress_payload(payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64 << 20);
    match payload {
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            let frame = &payload[..payload.len().saturating_sub(4)];
            let mut dec =
                ruzstd::decoding::StreamingDecoder::new_with_max_window_size(frame, 1 << 31)
                    .map_err(|e| format!("zstd: {e}"))?;
            dec.read_to_end(&mut out)
                .map_err(|e| format!("zstd: {e}"))?;
        }
        [0x1f, 0x8b, ..] => out = gunzip(payload, MAX_VMLINUX)?,
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
            lzma_rs::xz_decompress(&mut &payload[..], &mut out).map_err(|e| format!("xz: {e}"))?
        }
        [0x5d, 0, 0, ..] => lzma_rs::lzma_decompress(&mut &payload[..], &mut out)
            .map_err(|e| format!("lzma: {e}"))?,
        [b'B', b'Z', b'h', ..] => return Err("payload is bzip2, which is not supported".into()),
        [0x02, 0x21, 0x4c, 0x18, ..] => return Err("payload is lz4, which is not supported".into()),
        [0x89, b'L', b'Z', b'O', ..] => return Err("payload is lzo, which is not supported".into()),
        _ => return Err("payload compression not recognised (zstd, gzip, xz or lzma)".into()),
    }
    Ok(out)
}

/// Decompresses one gzip member (RFC 1952) of at most `limit` bytes; trailing data (a
/// bzImage's size word, the rest of a kernel image) is ignored.
pub fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    if data.get(..3) != Some(&[0x1f, 0x8b, 8]) {
        return Err("gzip: bad magic or method".into());
    }
    let flags = data[3];
    let mut p = 10usize;
    if flags & FEXTRA != 0 {
        let xlen = Le(data)
            .u16(p)
            .map(usize::from)
            .ok_or("gzip: truncated header")?;
        p += 2 + xlen;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let end = data
                .get(p..)
                .and_then(|r| r.iter().position(|b| *b == 0))
                .ok_or("gzip: truncated header")?;
            p += end + 1;
        }
    }
    if flags & FHCRC != 0 {
        p += 2;
    }
    let body = data.get(p..).ok_or("gzip: truncated header")?;
    miniz_oxide::inflate::decompress_to_vec_with_limit(body, limit)
        .map_err(|e| format!("gzip: {e}"))
}

/// Whether an ELF64 kernel carries the PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`, type 18
/// in a "Xen" note) that QEMU needs to boot an uncompressed `vmlinux` directly.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let le = Le(elf);
    let (u16_at, u32_at) = (|o| le.u16(o), |o| le.u32(o));
    let u64_at = |o| le.u64(o).and_then(|v| usize::try_from(v).ok());
    let notes = |off: usize, size: usize| -> Option<bool> {
        let mut p = off;
        let end = off.checked_add(size)?;
        while p + 12 <= end {
            let (namesz, descsz, kind) =
                (u32_at(p)? as usize, u32_at(p + 4)? as usize, u32_at(p + 8)?);
            let name = elf.get(p + 12..p + 12 + namesz)?;
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
                return Some(true);
            }
            p += 12 + namesz.next_multiple_of(4) + descsz.next_multiple_of(4);
        }
        Some(false)
    };
    let scan = || -> Option<bool> {
        if elf.get(..5) != Some(b"\x7fELF\x02") {
            return None;
        }
        let (phoff, phentsize, phnum) = (u64_at(0x20)?, usize::from(u16_at(0x36)?), u16_at(0x38)?);
        for i in 0..usize::from(phnum) {
            let h = phoff.checked_add(i.checked_mul(phentsize)?)?;
            if u32_at(h)? == PT_NOTE && notes(u64_at(h + 8)?, u64_at(h + 32)?)? {
                return Some(true);
            }
        }
        Some(false)
    };
    scan().unwrap_or(false)
}

/// The release (`uname -r`) a kernel image reports: a bzImage's `kernel_version` string
/// (setup header 0x20e), else the first `Linux version X` banner in the image.
pub fn image_release(image: &[u8]) -> Option<String> {
    let word = |b: &[u8]| -> Option<String> {
        let end = b.iter().position(|c| c.is_ascii_whitespace() || *c == 0)?;
        let r = std::str::from_utf8(&b[..end]).ok()?;
        (!r.is_empty() && r.starts_with(|c: char| c.is_ascii_digit())).then(|| r.to_owned())
    };
    if is_bzimage(image) {
        let ptr = Le(image).u16(0x20e)?;
        if ptr != 0 {
            return image.get(usize::from(ptr) + 0x200..).and_then(word);
        }
    }
    const BANNER: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(i) = find_bytes(image.get(from..)?, BANNER) {
        let at = from + i + BANNER.len();
        if let Some(r) = image.get(at..).and_then(word) {
            return Some(r);
        }
        from = at;
    }
    None
}

/// The offset of the first `needle` in `hay`.
pub fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = hay.get(from..)?.iter().position(|b| *b == first) {
        let at = from + i;
        if hay.get(at + 1..at + needle.len()) == Some(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Decompresses a module file (`.ko`, `.ko.xz`, `.ko.zst`).
pub fn read_module(path: &Path) -> Result<Vec<u8>, ImagesError> {
    let raw = std::fs::read(path).map_err(|e| ImagesError::io("reading module", path, e))?;
    let name = path.to_string_lossy();
    let bad = |why: String| ImagesError::Kernel(format!("module {}: {why}", path.display()));
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out)
            .map_err(|e| bad(format!("xz: {e}")))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        let mut dec = ruzstd::decoding::StreamingDecoder::new(raw.as_slice())
            .map_err(|e| bad(format!("zstd: {e}")))?;
        let mut out = Vec::new();
        dec.read_to_end(&mut out)
            .map_err(|e| bad(format!("zstd: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Little-endian fields of a byte buffer; `None` past its end.
struct Le<'a>(&'a [u8]);

impl Le<'_> {
    fn u16(&self, o: usize) -> Option<u16> {
        Some(u16::from_le_bytes(
            self.0.get(o..o.checked_add(2)?)?.try_into().ok()?,
        ))
    }

    fn u32(&self, o: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.0.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    }

    fn u64(&self, o: usize) -> Option<u64> {
        Some(u64::from_le_bytes(
            self.0.get(o..o.checked_add(8)?)?.try_into().ok()?,
        ))
    }
}

/// The `.modinfo` section of an ELF64 little-endian object, as `key=value` strings.
pub fn modinfo(elf: &[u8]) -> Vec<String> {
    let le = Le(elf);
    let (u16_at, u32_at, u64_at) = (|o| le.u16(o), |o| le.u32(o), |o| le.u64(o));
    let section = |shoff: usize, entsize: usize, i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(entsize)?)?;
        Some((
            u32_at(h)?,
            usize::try_from(u64_at(h + 24)?).ok()?,
            usize::try_from(u64_at(h + 32)?).ok()?,
        ))
    };
    let parse = || -> Option<Vec<String>> {
        if elf.get(..5) != Some(b"\x7fELF\x02") {
            return None;
        }
        let shoff = usize::try_from(u64_at(0x28)?).ok()?;
        let entsize = usize::from(u16_at(0x3a)?);
        let shnum = usize::from(u16_at(0x3c)?);
        let shstrndx = usize::from(u16_at(0x3e)?);
        let (_, stroff, strsize) = section(shoff, entsize, shstrndx)?;
        let strtab = elf.get(stroff..stroff.checked_add(strsize)?)?;
        for i in 0..shnum {
            let (name, off, size) = section(shoff, entsize, i)?;
            let n = strtab.get(name as usize..)?;
            let n = &n[..n.iter().position(|b| *b == 0)?];
            if n == b".modinfo" {
                let data = elf.get(off..off.checked_add(size)?)?;
                return Some(
                    data.split(|b| *b == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                );
            }
        }
        Some(Vec::new())
    };
    parse().unwrap_or_default()
}

/// Canonical module name: file stem without extensions, dashes as underscores.
pub fn module_name(path: &Path) -> Option<String> {
    let f = path.file_name()?.to_str()?;
    let stem = f.split(".ko").next()?;
    Some(stem.replace('-', "_"))
}

/// The modules a module depends on (`.modinfo` `depends=`), as canonical names.
pub fn depends(elf: &[u8]) -> Vec<String> {
    modinfo(elf)
        .iter()
        .filter_map(|kv| kv.strip_prefix("depends="))
        .flat_map(|d| d.split(','))
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// Index of a kernel's module tree: canonical name -> file, and the modules built into the
/// kernel (`modules.builtin`), which need no loading.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    pub fn scan(dir: &Path) -> Result<Self, ImagesError> {
        let mut files = BTreeMap::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            let rd =
                std::fs::read_dir(&d).map_err(|e| ImagesError::io("scanning modules", &d, e))?;
            for e in rd.filter_map(Result::ok) {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(p);
                } else if p.to_string_lossy().contains(".ko") {
                    if let Some(n) = module_name(&p) {
                        files.insert(n, p);
                    }
                }
            }
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| module_name(Path::new(l.trim())))
            .collect();
        Ok(Self { files, builtin })
    }

    /// The file of module `name` in the tree (`.ko`, or compressed `.ko.xz`/`.ko.zst`).
    pub fn file(&self, name: &str) -> Option<&Path> {
        self.files
            .get(&name.replace('-', "_"))
            .map(PathBuf::as_path)
    }

    /// Whether module `name` is in the tree as a file.
    pub fn contains(&self, name: &str) -> bool {
        self.files.contains_key(&name.replace('-', "_"))
    }

    /// Whether module `name` is built into the kernel (`modules.builtin`).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    /// A fingerprint of the tree (each module's name, size and modification time), so an
    /// image built from it is rebuilt when a module changes.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, path) in &self.files {
            name.hash(&mut h);
            if let Ok(m) = std::fs::metadata(path) {
                m.len().hash(&mut h);
                m.modified().ok().hash(&mut h);
            }
        }
        self.builtin.hash(&mut h);
        h.finish()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Resolves `wanted` and everything they depend on, dependencies first; returns
    /// (name, decompressed module) in load order.
    pub fn resolve(&self, wanted: &[String]) -> Result<Vec<(String, Vec<u8>)>, ImagesError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(
                &w.replace('-', "_"),
                &mut done,
                &mut BTreeSet::new(),
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        path: &mut BTreeSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<(), ImagesError> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if !path.insert(name.to_owned()) {
            return Err(ImagesError::Kernel(format!(
                "module dependency cycle at {name}"
            )));
        }
        let file = self.files.get(name).ok_or_else(|| {
            ImagesError::Kernel(format!(
                "module {name} is not in the kernel's module tree (built in or misspelt?)"
            ))
        })?;
        let data = read_module(file)?;
        for d in depends(&data) {
            self.visit(&d, done, path, order)?;
        }
        path.remove(name);
        done.insert(name.to_owned());
        order.push((name.to_owned(), data));
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 with a section-name table and a .modinfo section.
    pub(crate) fn elf_with_modinfo(info: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut f = vec![0u8; 0x40];
        f[..5].copy_from_slice(b"\x7fELF\x02");
        let shstr_off = f.len();
        f.extend_from_slice(shstr);
        let info_off = f.len();
        f.extend_from_slice(info);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len();
        let sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        f.extend(sh(0, 0, 0));
        f.extend(sh(1, shstr_off, shstr.len()));
        f.extend(sh(11, info_off, info.len()));
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f
    }

    #[test]
    fn modinfo_reads_depends() {
        let elf = elf_with_modinfo(b"license=GPL\0depends=vfio,irqbypass\0name=vfio_pci_core\0");
        let m = modinfo(&elf);
        assert!(m.contains(&"depends=vfio,irqbypass".to_owned()));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn modinfo_of_garbage_is_empty_not_a_panic() {
        assert!(modinfo(b"\x7fELF\x02garbage").is_empty());
        let mut elf = elf_with_modinfo(b"depends=\0");
        elf[0x28] = 0xff;
        assert!(modinfo(&elf).is_empty());
    }

    #[test]
    fn resolve_orders_dependencies_first() {
        let dir = std::env::temp_dir().join(format!("images-modtest-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel/drivers")).expect("mkdir");
        let write = |n: &str, deps: &str| {
            let info = format!("depends={deps}\0");
            std::fs::write(
                dir.join("kernel/drivers").join(n),
                elf_with_modinfo(info.as_bytes()),
            )
            .expect("write");
        };
        write("vfio-pci.ko", "vfio_pci_core,vfio");
        write("vfio_pci_core.ko", "vfio,irqbypass");
        write("vfio.ko", "");
        write("irqbypass.ko", "");
        let idx = ModuleIndex::scan(&dir).expect("scan");
        let order: Vec<String> = idx
            .resolve(&["vfio-pci".to_owned()])
            .expect("resolve")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            order,
            vec!["vfio", "irqbypass", "vfio_pci_core", "vfio_pci"]
        );
        let missing = idx
            .resolve(&["nope".to_owned()])
            .expect_err("must fail")
            .to_string();
        assert!(missing.contains("nope"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An ELF64 with one PT_NOTE program header over `notes`.
    fn elf_with_notes(notes: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x40 + 56];
        f[..5].copy_from_slice(b"\x7fELF\x02");
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        f[0x40..0x44].copy_from_slice(&4u32.to_le_bytes());
        let off = f.len() as u64;
        f[0x48..0x50].copy_from_slice(&off.to_le_bytes());
        f[0x60..0x68].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        f.extend_from_slice(notes);
        f
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(kind.to_le_bytes());
        n.extend(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    #[test]
    fn the_pvh_note_is_found_among_other_notes() {
        let gnu = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        let pvh = note(b"Xen\0", 18, &0x100_0000u32.to_le_bytes());
        let other_xen = note(b"Xen\0", 6, b"linux\0");
        let with = [gnu.clone(), other_xen.clone(), pvh].concat();
        assert!(has_pvh_note(&elf_with_notes(&with)));
        assert!(!has_pvh_note(&elf_with_notes(&[gnu, other_xen].concat())));
        let mut truncated = elf_with_notes(&with);
        truncated.truncate(0x40 + 56 + 20);
        assert!(!has_pvh_note(&truncated));
        assert!(!has_pvh_note(b"not an elf"));
    }

    #[test]
    fn the_release_comes_from_the_bzimage_header_or_the_banner() {
        let mut bz = vec![0u8; 0x600];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        bz[0x500..0x520].copy_from_slice(b"6.19.0-rc1+ (me@box) #3 SMP\0\0\0\0\0");
        assert_eq!(image_release(&bz).as_deref(), Some("6.19.0-rc1+"));
        let elf = b"\x7fELF junk Linux version %s Linux version 7.3.4+deb13-amd64 (debian)";
        assert_eq!(image_release(elf).as_deref(), Some("7.3.4+deb13-amd64"));
        assert_eq!(image_release(b"\x7fELF nothing"), None);
    }

    #[test]
    fn built_in_modules_are_not_resolved_to_files() {
        let dir = std::env::temp_dir().join(format!("images-builtin-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kernel/drivers")).expect("mkdir");
        std::fs::write(
            dir.join("kernel/drivers/vfio-pci.ko"),
            elf_with_modinfo(b"depends=vfio\0"),
        )
        .expect("write");
        std::fs::write(dir.join("modules.builtin"), "kernel/drivers/vfio/vfio.ko\n")
            .expect("write");
        let idx = ModuleIndex::scan(&dir).expect("scan");
        assert!(idx.is_builtin("vfio") && !idx.contains("vfio") && idx.contains("vfio-pci"));
        let order: Vec<String> = idx
            .resolve(&["vfio".to_owned(), "vfio_pci".to_owned()])
            .expect("resolve")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(order, ["vfio_pci"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn extract_vmlinux_rejects_non_bzimage() {
        let e = extract_vmlinux(&[0u8; 4096])
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("HdrS"), "{e}");
    }
}
