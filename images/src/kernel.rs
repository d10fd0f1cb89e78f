//! Guest kernel from Debian: the uncompressed `vmlinux` (PVH entry, saves the 3 s zstd
//! decompression under TCG) and kernel modules resolved through their `.modinfo` `depends=`.

use crate::ImagesError;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Extracts the kernel ELF from a bzImage whose payload is zstd (Debian's kernels).
///
/// The setup header gives the payload's offset (0x248) and length (0x24c) relative to the
/// protected-mode code, which starts after (setup_sects + 1) sectors. The payload's last four
/// bytes are the uncompressed size, not part of the zstd frame.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ImagesError> {
    let bad = |why: &str| ImagesError::Kernel(format!("bzImage: {why}"));
    let rd32 = |o: usize| -> Option<u32> {
        bzimage
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
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
    if payload.get(..4) != Some(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(bad("payload is not zstd (only zstd kernels are supported)"));
    }
    let frame = &payload[..payload.len().saturating_sub(4)];
    let mut dec = ruzstd::decoding::StreamingDecoder::new_with_max_window_size(frame, 1 << 31)
        .map_err(|e| bad(&format!("zstd: {e}")))?;
    let mut out = Vec::with_capacity(64 << 20);
    dec.read_to_end(&mut out)
        .map_err(|e| bad(&format!("zstd: {e}")))?;
    if out.get(..4) != Some(b"\x7fELF") {
        return Err(bad("decompressed payload is not an ELF file"));
    }
    Ok(out)
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

/// The `.modinfo` section of an ELF64 little-endian object, as `key=value` strings.
pub fn modinfo(elf: &[u8]) -> Vec<String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
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

/// Index of a kernel's module tree: canonical name -> file.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
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
        Ok(Self { files })
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
        if done.contains(name) {
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

    #[test]
    fn extract_vmlinux_rejects_non_bzimage() {
        let e = extract_vmlinux(&[0u8; 4096])
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("HdrS"), "{e}");
    }
}
