//! The handlers of the mailbox's command table ([`super::COMMANDS`]), one per command, in
//! opcode order: each reads its input payload, checks it as the spec's command description
//! says, and writes its output payload (CXL 3.2 §8.2.10.2, .4, .5, .9).

use super::*;

/// Writes `v` at the start of `out`; the payload area always holds every fixed output.
pub(super) fn put<T: IntoBytes + zerocopy::Immutable>(
    out: &mut [u8],
    v: &T,
) -> Result<Reply, ReturnCode> {
    let b = v.as_bytes();
    out.get_mut(..b.len())
        .ok_or(ReturnCode::InternalError)?
        .copy_from_slice(b);
    Ok(Reply::Done(b.len()))
}

pub(super) fn read<T: FromBytes>(input: &[u8]) -> Result<T, ReturnCode> {
    T::read_from_prefix(input)
        .map(|(v, _)| v)
        .map_err(|_| ReturnCode::InvalidPayloadLength)
}

pub(super) fn get_event_records(
    _: &mut Mailbox,
    input: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    if input[0] >= EVENT_LOGS {
        return Err(ReturnCode::InvalidInput);
    }
    put(out, &GetEventRecordsOut::default())
}

pub(super) fn clear_event_records(
    _: &mut Mailbox,
    input: &[u8],
    _: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let h: ClearEventRecordsIn = read(input)?;
    if input.len() != 6 + 2 * usize::from(h.number_of_handles) {
        return Err(ReturnCode::InvalidPayloadLength);
    }
    if h.event_log >= EVENT_LOGS {
        return Err(ReturnCode::InvalidInput);
    }
    // The logs are empty: Clear All succeeds, any handle is unknown.
    match (h.flags & 1 != 0, h.number_of_handles) {
        (true, 0) | (false, 0) => Ok(Reply::Done(0)),
        (true, _) => Err(ReturnCode::InvalidInput),
        (false, _) => Err(ReturnCode::InvalidHandle),
    }
}

pub(super) fn get_event_interrupt_policy(
    m: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    put(out, &m.event_policy)
}

pub(super) fn set_event_interrupt_policy(
    m: &mut Mailbox,
    input: &[u8],
    _: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let mut settings = [0u8; 5];
    settings[..input.len()].copy_from_slice(input);
    // Interrupt Mode 0 (none) or 1 (MSI/MSI-X, message 0); FW interrupts are not offered.
    if settings.iter().any(|s| s & 0x3 > 1) {
        return Err(ReturnCode::InvalidInput);
    }
    let keep_dcd = m.event_policy.dynamic_capacity;
    let mut p =
        EventInterruptPolicy::read_from_bytes(&settings).map_err(|_| ReturnCode::InternalError)?;
    for s in p.as_mut_bytes() {
        *s &= 0x3;
    }
    if input.len() == 4 {
        p.dynamic_capacity = keep_dcd;
    }
    m.event_policy = p;
    Ok(Reply::Done(0))
}

pub(super) fn device_time(m: &Mailbox, now: u64) -> u64 {
    m.timestamp
        .map_or(0, |(set, at)| set.wrapping_add(now.saturating_sub(at)))
}

pub(super) fn get_timestamp(
    m: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    now: u64,
) -> Result<Reply, ReturnCode> {
    put(
        out,
        &Timestamp {
            timestamp: U64::new(device_time(m, now)),
        },
    )
}

pub(super) fn set_timestamp(
    m: &mut Mailbox,
    input: &[u8],
    _: &mut [u8],
    now: u64,
) -> Result<Reply, ReturnCode> {
    let t: Timestamp = read(input)?;
    m.timestamp = Some((t.timestamp.get(), now));
    Ok(Reply::Done(0))
}

const CEL_BYTES: usize = COMMANDS.len() * core::mem::size_of::<CelEntry>();

pub(super) fn cel() -> Vec<u8> {
    COMMANDS
        .iter()
        .flat_map(|c| {
            let e = CelEntry {
                opcode: U16::new(c.opcode),
                command_effect: U16::new(c.effect),
            };
            e.as_bytes().to_vec()
        })
        .collect()
}

pub(super) fn get_supported_logs(
    _: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let header = SupportedLogsOut {
        number_of_entries: U16::new(1),
        reserved: [0; 6],
    };
    let entry = SupportedLogEntry {
        log_identifier: CEL_UUID,
        log_size: U32::new(CEL_BYTES as u32),
    };
    let bytes = [header.as_bytes(), entry.as_bytes()].concat();
    out.get_mut(..bytes.len())
        .ok_or(ReturnCode::InternalError)?
        .copy_from_slice(&bytes);
    Ok(Reply::Done(bytes.len()))
}

pub(super) fn get_log(
    _: &mut Mailbox,
    input: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let g: GetLogIn = read(input)?;
    if g.log_identifier != CEL_UUID {
        return Err(ReturnCode::InvalidLog);
    }
    let (off, len) = (g.offset.get() as usize, g.length.get() as usize);
    if len > out.len() || off.checked_add(len).is_none_or(|e| e > CEL_BYTES) {
        return Err(ReturnCode::InvalidInput);
    }
    out[..len].copy_from_slice(&cel()[off..off + len]);
    Ok(Reply::Done(len))
}

pub(super) fn identify(
    m: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let mut fw = [0u8; 16];
    let r = m.identity.fw_revision.as_bytes();
    let n = r.len().min(16);
    fw[..n].copy_from_slice(&r[..n]);
    let units = U64::new(m.capacity_units());
    let mer = POISON_LIST_MAX.to_le_bytes();
    put(
        out,
        &IdentifyOut {
            fw_revision: fw,
            total_capacity: units,
            volatile_only_capacity: units,
            persistent_only_capacity: U64::new(0),
            partition_alignment: U64::new(0),
            info_event_log_size: U16::new(8),
            warning_event_log_size: U16::new(8),
            failure_event_log_size: U16::new(8),
            fatal_event_log_size: U16::new(8),
            lsa_size: U32::new(LSA_SIZE as u32),
            poison_list_max_mer: [mer[0], mer[1], mer[2]],
            inject_poison_limit: U16::new(0),
            poison_handling_capabilities: 0,
            qos_telemetry_capabilities: 0,
            dynamic_capacity_event_log_size: U16::new(0),
        },
    )
}

pub(super) fn get_partition_info(
    m: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    put(
        out,
        &PartitionInfoOut {
            active_volatile_capacity: U64::new(m.capacity_units()),
            ..Default::default()
        },
    )
}

pub(super) fn lsa_range(offset: u32, len: usize) -> Result<std::ops::Range<usize>, ReturnCode> {
    let start = offset as usize;
    match start.checked_add(len) {
        Some(end) if end <= LSA_SIZE => Ok(start..end),
        _ => Err(ReturnCode::InvalidInput),
    }
}

pub(super) fn get_lsa(
    m: &mut Mailbox,
    input: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let g: GetLsaIn = read(input)?;
    let len = g.length.get() as usize;
    if len > out.len() {
        return Err(ReturnCode::InvalidInput);
    }
    let r = lsa_range(g.offset.get(), len)?;
    out[..len].copy_from_slice(&m.lsa[r]);
    Ok(Reply::Done(len))
}

pub(super) fn set_lsa(
    m: &mut Mailbox,
    input: &[u8],
    _: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let h: SetLsaIn = read(input)?;
    let data = &input[core::mem::size_of::<SetLsaIn>()..];
    let r = lsa_range(h.offset.get(), data.len())?;
    m.lsa[r].copy_from_slice(data);
    Ok(Reply::Done(0))
}

pub(super) fn get_health_info(
    _: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    // Healthy, media normal, 35 degrees C, nothing used up, no errors.
    put(
        out,
        &HealthInfoOut {
            device_temperature: U16::new(35),
            ..Default::default()
        },
    )
}

pub(super) fn get_poison_list(
    m: &mut Mailbox,
    input: &[u8],
    out: &mut [u8],
    now: u64,
) -> Result<Reply, ReturnCode> {
    let r: DpaRangeIn = read(input)?;
    m.dpa_range(r.physical_address.get(), r.physical_address_length.get())?;
    let scanning =
        u8::from(m.background_running(now) && m.background.is_some_and(|b| b.opcode == SCAN_MEDIA));
    put(
        out,
        &PoisonListOut {
            flags: scanning << 2,
            ..Default::default()
        },
    )
}

pub(super) fn scan_time_ns(len: u64) -> u64 {
    SCAN_MEDIA_BASE_NS + (len >> 26) * SCAN_MEDIA_NS_PER_64MIB
}

pub(super) fn get_scan_media_caps(
    m: &mut Mailbox,
    input: &[u8],
    out: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let r: DpaRangeIn = read(input)?;
    let (_, len) = m.dpa_range(r.physical_address.get(), r.physical_address_length.get())?;
    let ms = scan_time_ns(len).div_ceil(1_000_000);
    put(
        out,
        &ScanMediaCapsOut {
            estimated_scan_media_time: U32::new(ms.min(u64::from(u32::MAX)) as u32),
        },
    )
}

pub(super) fn scan_media(
    m: &mut Mailbox,
    input: &[u8],
    _: &mut [u8],
    _: u64,
) -> Result<Reply, ReturnCode> {
    let s: ScanMediaIn = read(input)?;
    let (addr, len) = m.dpa_range(s.physical_address.get(), s.physical_address_length.get())?;
    m.scanned = None;
    m.scanning = Some((addr, len));
    Ok(Reply::Background {
        duration_ns: scan_time_ns(len),
    })
}

pub(super) fn get_scan_media_results(
    m: &mut Mailbox,
    _: &[u8],
    out: &mut [u8],
    now: u64,
) -> Result<Reply, ReturnCode> {
    // Results exist once a Scan Media has completed; none while one runs or before any.
    if m.background_running(now) {
        return Err(ReturnCode::Busy);
    }
    let Some((addr, len)) = m.scanned else {
        return Err(ReturnCode::InvalidInput);
    };
    put(
        out,
        &ScanMediaResultsOut {
            restart_physical_address: U64::new(addr + len),
            restart_physical_address_length: U64::new(0),
            ..Default::default()
        },
    )
}
