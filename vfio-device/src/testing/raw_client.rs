//! A minimal vfio-user client that writes the wire format itself (QEMU
//! `docs/interop/vfio-user.rst`: the message header, `VFIO_USER_VERSION`,
//! `VFIO_USER_REGION_READ`/`REGION_WRITE`), for replies the `vfio_user` crate's client cannot
//! show: an error reply to a region access. Left out: every other command.

use std::path::Path;

/// A minimal vfio-user client that speaks the wire format itself (QEMU
/// `docs/interop/vfio-user.rst`), for what the crate's client cannot show: an error reply to a
/// region access (the crate's client waits for data that never comes).
#[derive(Debug)]
pub struct RawClient {
    stream: std::os::unix::net::UnixStream,
    id: u16,
}

/// The reply to one region access: the header's error flag and errno, and the payload.
#[derive(Debug, PartialEq, Eq)]
pub struct RawReply {
    pub error: bool,
    pub errno: u32,
    pub data: Vec<u8>,
}

impl RawClient {
    const VERSION: u16 = 1;
    const REGION_READ: u16 = 9;
    const REGION_WRITE: u16 = 10;
    const FLAG_ERROR: u32 = 1 << 5;

    /// Connects and negotiates the protocol version.
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        use std::io::Write;
        let stream = std::os::unix::net::UnixStream::connect(path)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        let mut c = Self { stream, id: 0 };
        let caps = b"{\"capabilities\":{\"max_msg_fds\":1,\"max_data_xfer_size\":1048576}}\0";
        let mut msg = c.header(Self::VERSION, 20 + caps.len());
        msg.extend_from_slice(&0u16.to_le_bytes());
        msg.extend_from_slice(&1u16.to_le_bytes());
        msg.extend_from_slice(caps);
        c.stream.write_all(&msg)?;
        c.reply()?;
        Ok(c)
    }

    fn header(&mut self, command: u16, size: usize) -> Vec<u8> {
        self.id = self.id.wrapping_add(1);
        let mut h = Vec::with_capacity(size);
        h.extend_from_slice(&self.id.to_le_bytes());
        h.extend_from_slice(&command.to_le_bytes());
        h.extend_from_slice(&(size as u32).to_le_bytes());
        h.extend_from_slice(&[0; 8]);
        h
    }

    fn reply(&mut self) -> std::io::Result<RawReply> {
        use std::io::Read;
        let mut h = [0u8; 16];
        self.stream.read_exact(&mut h)?;
        let word = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let mut data = vec![0u8; (word(4) as usize).saturating_sub(16)];
        self.stream.read_exact(&mut data)?;
        Ok(RawReply {
            error: word(8) & Self::FLAG_ERROR != 0,
            errno: word(12),
            data,
        })
    }

    /// Reads `count` bytes of `region` at `offset`; the data has the access header stripped.
    pub fn read(&mut self, region: u32, offset: u64, count: u32) -> std::io::Result<RawReply> {
        self.access(Self::REGION_READ, region, offset, count, &[])
    }

    /// Whether a read and a write of `count` bytes of `region` at `offset` both get an error
    /// reply without data (an access past the end of the region).
    pub fn refused(&mut self, region: u32, offset: u64, count: u32) -> std::io::Result<bool> {
        let r = self.read(region, offset, count)?;
        let w = self.write(region, offset, &vec![0xff; count as usize])?;
        Ok(r.error && r.data.is_empty() && w.error)
    }

    /// Writes `data` to `region` at `offset`.
    pub fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<RawReply> {
        self.access(Self::REGION_WRITE, region, offset, data.len() as u32, data)
    }

    fn access(
        &mut self,
        command: u16,
        region: u32,
        offset: u64,
        count: u32,
        data: &[u8],
    ) -> std::io::Result<RawReply> {
        use std::io::Write;
        let mut msg = self.header(command, 32 + data.len());
        msg.extend_from_slice(&offset.to_le_bytes());
        msg.extend_from_slice(&region.to_le_bytes());
        msg.extend_from_slice(&count.to_le_bytes());
        msg.extend_from_slice(data);
        self.stream.write_all(&msg)?;
        let mut r = self.reply()?;
        if !r.error {
            r.data.drain(..r.data.len().min(16));
        }
        Ok(r)
    }
}

impl RawClient {
    /// Size of memory BAR `index` by the PCI sizing protocol through the configuration space
    /// (all ones written to the BAR register, the size mask read back, the value restored).
    pub fn bar_size(&mut self, index: u8) -> std::io::Result<u64> {
        const CONFIG: u32 = 7;
        let reg = 0x10 + 4 * u64::from(index);
        let dword = |r: &RawReply| -> std::io::Result<u32> {
            r.data
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| std::io::Error::other(format!("config read failed: {r:?}")))
        };
        let old = dword(&self.read(CONFIG, reg, 4)?)?;
        self.write(CONFIG, reg, &u32::MAX.to_le_bytes())?;
        let mask = dword(&self.read(CONFIG, reg, 4)?)? & !0xf;
        self.write(CONFIG, reg, &old.to_le_bytes())?;
        Ok(u64::from((!mask).wrapping_add(1)))
    }
}
