//! The configuration a kernel under test was built with (`CONFIG_*` options), read from:
//!
//! 1. a file the user names (`--kernel-config`);
//! 2. the image itself, when it embeds its configuration (`CONFIG_IKCONFIG`: a gzip stream
//!    between the markers `IKCFG_ST` and `IKCFG_ED`, Linux `kernel/configs.c`); in a bzImage
//!    that stream is inside the compressed payload, which is decompressed first;
//! 3. a file next to the image or its module tree: `.config` beside the `vmlinux` of a build
//!    tree, `config` in the module tree (Debian trixie ships it there), `config-RELEASE` or
//!    `../../../boot/config-RELEASE` beside it (the Debian `/boot` layout), or `build/.config`
//!    (the module tree's link to its build tree).
//!
//! What it leaves out: `/proc/config.gz` of a running guest (the check runs before boot).

use crate::{kernel, ImagesError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The embedded configuration's start and end markers (Linux `kernel/configs.c`).
const IKCFG_ST: &[u8] = b"IKCFG_ST";
const IKCFG_ED: &[u8] = b"IKCFG_ED";
/// Largest configuration accepted (a full x86 config is about 300 KB).
const MAX_CONFIG: usize = 16 << 20;

/// A kernel's `CONFIG_*` options (without the prefix) and their values (`y`, `m`, numbers,
/// strings); options that are `is not set` are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    options: BTreeMap<String, String>,
    /// Where it was read from, for messages.
    pub source: String,
}

impl KernelConfig {
    /// Parses `.config` text.
    pub fn parse(text: &str, source: &str) -> Self {
        let options = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("CONFIG_")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        Self {
            options,
            source: source.to_owned(),
        }
    }

    /// The value of option `name` (`VFIO`, with or without `CONFIG_`).
    pub fn get(&self, name: &str) -> Option<&str> {
        let n = name.strip_prefix("CONFIG_").unwrap_or(name);
        self.options.get(n).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.options.len()
    }

    pub fn is_empty(&self) -> bool {
        self.options.is_empty()
    }
}

/// The configuration embedded in a kernel image (ELF `vmlinux` or bzImage), if it has one.
pub fn embedded(image: &[u8]) -> Result<Option<String>, ImagesError> {
    if kernel::is_bzimage(image) {
        let elf = kernel::extract_vmlinux(image)?;
        return embedded_in(&elf);
    }
    embedded_in(image)
}

fn embedded_in(image: &[u8]) -> Result<Option<String>, ImagesError> {
    let Some(start) = kernel::find_bytes(image, IKCFG_ST) else {
        return Ok(None);
    };
    let body = &image[start + IKCFG_ST.len()..];
    let end = kernel::find_bytes(body, IKCFG_ED).unwrap_or(body.len());
    let text = kernel::gunzip(&body[..end], MAX_CONFIG)
        .map_err(|why| ImagesError::Kernel(format!("embedded configuration (IKCONFIG): {why}")))?;
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// Files that may hold the configuration of `image` with module tree `modules_dir`, in the
/// order they are tried.
pub fn candidates(image: &Path, modules_dir: Option<&Path>, release: &str) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(dir) = image.parent() {
        c.push(dir.join(".config"));
        c.push(dir.join(format!("config-{release}")));
    }
    if let Some(m) = modules_dir {
        c.push(m.join("config"));
        if let Some(parent) = m.parent() {
            c.push(parent.join(format!("config-{release}")));
        }
        c.push(m.join("../../../boot").join(format!("config-{release}")));
        c.push(m.join("build/.config"));
    }
    c
}

/// Reads a `.config` file, or a gzipped one (`/proc/config.gz` copied out of a guest); a file
/// without a single `CONFIG_` option is refused as not a configuration.
fn read_file(p: &Path) -> Result<KernelConfig, ImagesError> {
    let bytes =
        std::fs::read(p).map_err(|e| ImagesError::io("reading the kernel configuration", p, e))?;
    let bad = |why: String| ImagesError::Kernel(format!("{}: {why}", p.display()));
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        crate::kernel::gunzip(&bytes, 64 << 20).map_err(|e| bad(format!("gzip: {e}")))?
    } else {
        bytes
    };
    let text = String::from_utf8(bytes).map_err(|_| bad("not a text file".into()))?;
    let c = KernelConfig::parse(&text, &p.display().to_string());
    if c.is_empty() {
        return Err(bad(
            "not a kernel configuration (no CONFIG_ option in it)".into()
        ));
    }
    Ok(c)
}

/// Reads the configuration of a kernel: `explicit` if given, else what the image embeds and
/// the first of [`candidates`] that exists, the image first when `embedded_first` (a user's
/// kernel; a Debian image embeds none, so its files are tried first). `None` when there is
/// none anywhere.
pub fn load(
    explicit: Option<&Path>,
    image: &Path,
    modules_dir: Option<&Path>,
    release: &str,
    embedded_first: bool,
) -> Result<Option<KernelConfig>, ImagesError> {
    if let Some(p) = explicit {
        return read_file(p).map(Some);
    }
    let from_image = || -> Result<Option<KernelConfig>, ImagesError> {
        let bytes = std::fs::read(image).map_err(|e| ImagesError::io("reading", image, e))?;
        Ok(embedded(&bytes)?.map(|text| {
            let source = format!("{} (embedded, IKCONFIG)", image.display());
            KernelConfig::parse(&text, &source)
        }))
    };
    if embedded_first {
        // An image this cannot read (an lz4 or bzip2 bzImage, say) leaves the files.
        match from_image() {
            Ok(Some(c)) => return Ok(Some(c)),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "no configuration read from the image"),
        }
    }
    if let Some(p) = candidates(image, modules_dir, release)
        .iter()
        .find(|p| p.is_file())
    {
        return read_file(p).map(Some);
    }
    if embedded_first {
        Ok(None)
    } else {
        from_image()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "#\n# Automatically generated file\n#\nCONFIG_VFIO=m\nCONFIG_NUMA=y\n\
        # CONFIG_IKCONFIG is not set\nCONFIG_LOCALVERSION=\"-test\"\nCONFIG_NR_CPUS=64\n";

    /// A gzip member (RFC 1952) around raw deflate data, with a file name in the header as
    /// the kernel's build writes none and other tools do.
    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut g = vec![0x1f, 0x8b, 8, 8, 0, 0, 0, 0, 0, 3];
        g.extend_from_slice(b"config\0");
        g.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
        g.extend_from_slice(&[0; 8]);
        g
    }

    #[test]
    fn a_given_file_may_be_gzipped_and_must_hold_options() {
        let dir = std::env::temp_dir().join(format!("kconfig-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (plain, gz, junk) = (dir.join("config"), dir.join("config.gz"), dir.join("notes"));
        std::fs::write(&plain, CONFIG).expect("write");
        std::fs::write(&gz, gzip(CONFIG.as_bytes())).expect("write");
        std::fs::write(&junk, "hello\n").expect("write");
        for p in [&plain, &gz] {
            let c = load(Some(p), &junk, None, "r", true)
                .expect("read")
                .expect("some");
            assert_eq!(c.get("VFIO"), Some("m"), "{}", p.display());
        }
        let e = load(Some(&junk), &junk, None, "r", true).expect_err("not a config");
        assert!(e.to_string().contains("no CONFIG_ option"), "{e}");
        // An image it cannot read leaves the files next to it.
        let (image, modules) = (dir.join("vmlinuz"), dir.join("r"));
        std::fs::write(&image, b"MZ not a kernel").expect("write");
        std::fs::create_dir_all(&modules).expect("mkdir");
        std::fs::copy(&plain, modules.join("config")).expect("copy");
        let c = load(None, &image, Some(&modules), "r", true).expect("falls back");
        assert!(c.is_some_and(|c| c.get("NUMA") == Some("y")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parse_keeps_set_options_and_drops_unset_ones() {
        let c = KernelConfig::parse(CONFIG, "test");
        assert_eq!(c.get("VFIO"), Some("m"));
        assert_eq!(c.get("CONFIG_NUMA"), Some("y"));
        assert_eq!(c.get("LOCALVERSION"), Some("-test"));
        assert_eq!(c.get("NR_CPUS"), Some("64"));
        assert_eq!(c.get("IKCONFIG"), None);
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn embedded_configuration_is_found_between_its_markers() {
        let mut image = vec![0x7f, b'E', b'L', b'F', 2];
        image.extend(std::iter::repeat_n(0xaa, 5000));
        image.extend_from_slice(IKCFG_ST);
        image.extend(gzip(CONFIG.as_bytes()));
        image.extend_from_slice(IKCFG_ED);
        image.extend(std::iter::repeat_n(0x55, 100));
        let text = embedded(&image).expect("decodes").expect("found");
        assert_eq!(text, CONFIG);
        assert_eq!(embedded(&image[..4000]).expect("no marker"), None);
    }

    #[test]
    fn a_corrupt_embedded_configuration_is_an_error_naming_it() {
        let mut image = IKCFG_ST.to_vec();
        image.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
        image.extend_from_slice(IKCFG_ED);
        let e = embedded(&image).expect_err("corrupt").to_string();
        assert!(e.contains("IKCONFIG"), "{e}");
    }

    #[test]
    fn a_gzip_bzimage_payload_is_decompressed_to_find_the_configuration() {
        // A kernel ELF that embeds its configuration, gzip-compressed into a bzImage.
        let mut elf = b"\x7fELF\x02".to_vec();
        elf.extend(std::iter::repeat_n(0, 300));
        elf.extend_from_slice(IKCFG_ST);
        elf.extend(gzip(CONFIG.as_bytes()));
        elf.extend_from_slice(IKCFG_ED);
        let mut payload = gzip(&elf);
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        let setup_sects = 1u8;
        let mut bz = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        bz[0x1f1] = setup_sects;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend([0u8; 16]);
        bz.extend(&payload);
        assert_eq!(kernel::extract_vmlinux(&bz).expect("gunzip"), elf);
        assert_eq!(embedded(&bz).expect("decodes").as_deref(), Some(CONFIG));
    }

    #[test]
    fn load_prefers_the_explicit_file_then_the_files_next_to_the_image() {
        let dir = std::env::temp_dir().join(format!("kconfig-{}", std::process::id()));
        let modules = dir.join("lib/modules/6.99.0");
        std::fs::create_dir_all(&modules).expect("mkdir");
        let image = dir.join("vmlinux");
        std::fs::write(&image, b"\x7fELF\x02 no configuration here").expect("write");
        assert_eq!(
            load(None, &image, Some(&modules), "6.99.0", true).expect("ok"),
            None
        );
        std::fs::write(modules.join("config"), "CONFIG_VFIO=y\n").expect("write");
        let c = load(None, &image, Some(&modules), "6.99.0", true)
            .expect("ok")
            .expect("found");
        assert_eq!(c.get("VFIO"), Some("y"));
        assert!(c.source.ends_with("6.99.0/config"), "{}", c.source);
        std::fs::write(dir.join(".config"), "CONFIG_VFIO=m\n").expect("write");
        let c = load(None, &image, Some(&modules), "6.99.0", true)
            .expect("ok")
            .expect("found");
        assert_eq!(c.get("VFIO"), Some("m"));
        let own = dir.join("mine.config");
        std::fs::write(&own, "CONFIG_NUMA=y\n").expect("write");
        let c = load(Some(&own), &image, Some(&modules), "6.99.0", true)
            .expect("ok")
            .expect("found");
        assert_eq!((c.get("NUMA"), c.get("VFIO")), (Some("y"), None));
        let e = load(Some(&dir.join("absent")), &image, None, "6.99.0", false)
            .expect_err("missing file")
            .to_string();
        assert!(e.contains("absent"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
