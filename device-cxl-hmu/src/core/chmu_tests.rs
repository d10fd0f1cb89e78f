use super::*;
use crate::core::check::Refusal;
use crate::core::hotlist_store::VecHotlist;

fn rd(b: &mut ChmuBlock, off: u64) -> u64 {
    let mut d = [0u8; 8];
    b.mmio_read(off, &mut d);
    u64::from_le_bytes(d)
}

fn wr(b: &mut ChmuBlock, off: u64, v: u64) {
    b.mmio_write(off, &v.to_le_bytes());
}

#[test]
fn common_capability_describes_instances() {
    let mut b = ChmuBlock::new(ChmuConfig::default());
    let cap0 = CommonCap0::from(rd(&mut b, CHMU_COMMON_CAP0));
    assert_eq!((cap0.version(), cap0.num_instances()), (1, 2));
    let len = CommonCap1::from(rd(&mut b, CHMU_COMMON_CAP1)).instance_length();
    assert_eq!(len, 0x3000);
}

#[test]
fn instance_capabilities_and_offsets() {
    let mut b = ChmuBlock::new(ChmuConfig::default());
    let base = b.config().instance_base(1);
    assert_eq!(base, 0x3010);
    assert_eq!(
        ChmuCap0::from(rd(&mut b, base + CHMU_CAP0)).hotlist_size(),
        1024
    );
    assert_eq!(rd(&mut b, base + CHMU_CAP2), 0x70);
    assert_eq!(rd(&mut b, base + CHMU_CAP3), 0xff0);
    let st = ChmuStatus::from(rd(&mut b, base + CHMU_STATUS));
    assert_eq!(st.counter_width(), 16);
}

/// What a driver finds walking the registers, for every instance count: each hotlist
/// (CAP3 + CAP0 hotlist size x 8) inside its instance (CHMU Instance Length), every
/// instance inside the 64 KiB block, and (paged) each hotlist on a page boundary.
#[test]
fn registers_describe_hotlists_inside_their_instances_and_the_block() {
    for n in 1..=16u8 {
        let mut b = ChmuBlock::new(ChmuConfig {
            instances: n,
            hotlist_size: u16::MAX,
            ..ChmuConfig::default()
        });
        let len = u64::from(CommonCap1::from(rd(&mut b, CHMU_COMMON_CAP1)).instance_length());
        assert!(
            0x10 + u64::from(n) * len <= CHMU_BLOCK_SIZE,
            "{n} instances"
        );
        for i in 0..u64::from(n) {
            let base = 0x10 + i * len;
            let size = u64::from(ChmuCap0::from(rd(&mut b, base + CHMU_CAP0)).hotlist_size());
            let cap2 = rd(&mut b, base + CHMU_CAP2);
            let cap3 = rd(&mut b, base + CHMU_CAP3);
            assert!(cap2 >= CHMU_HOTLIST_TAIL + 2 && cap3 > cap2);
            assert!(
                cap3 + size * 8 <= len,
                "{n} instances: hotlist {i} leaves it"
            );
            if n <= 7 {
                assert_eq!((CHMU_BLOCK_OFFSET + base + cap3) % 0x1000, 0);
            }
        }
    }
}

/// A configuration every check accepts: 4 KiB units, all requests, 100 us x 1 epochs,
/// the first 256 MiB.
fn configure(b: &mut ChmuBlock, base: u64, unit_log2: u32) {
    wr(
        b,
        base + CHMU_CFG1,
        ChmuCfg1::new()
            .with_unit_size(unit_log2)
            .with_epoch_scale(1)
            .with_epoch_mult(1)
            .into(),
    );
    b.mmio_write(base + CHMU_RANGE_BITMAP, &[1]);
}

fn enable(b: &mut ChmuBlock, base: u64, cfg0: ChmuCfg0) -> bool {
    wr(b, base + CHMU_CFG0, cfg0.with_enable(true).into());
    ChmuStatus::from(rd(b, base + CHMU_STATUS)).enabled()
}

fn all_requests() -> ChmuCfg0 {
    ChmuCfg0::new().with_m2s_req_type(6)
}

#[test]
fn enable_with_valid_config_sets_enabled() {
    let mut b = ChmuBlock::new(ChmuConfig::default());
    let base = b.config().instance_base(0);
    configure(&mut b, base, 12);
    assert!(enable(&mut b, base, all_requests()));
    let st = ChmuStatus::from(rd(&mut b, base + CHMU_STATUS));
    assert_eq!(st.op_in_progress(), 0);
    assert_eq!(b.counters().enables, 1);
}

/// Sets CFG1's epoch, tries to enable, and returns whether it took and the refusal.
fn try_epoch(scale: u8, mult: u16) -> (bool, Result<(), Refusal>) {
    let mut b = ChmuBlock::new(ChmuConfig::default());
    let base = b.config().instance_base(1);
    configure(&mut b, base, 12);
    let cfg1 = ChmuCfg1::from(rd(&mut b, base + CHMU_CFG1))
        .with_epoch_scale(scale)
        .with_epoch_mult(mult);
    wr(&mut b, base + CHMU_CFG1, cfg1.into());
    wr(&mut b, base + CHMU_CFG0, all_requests().into());
    let why = b.check_enable(1);
    (enable(&mut b, base, all_requests()), why)
}

#[test]
fn epochs_outside_the_advertised_range_never_enable() {
    let cap0 = ChmuCap0::from(ChmuConfig::default().cap0());
    assert_eq!((cap0.min_epoch_scale(), cap0.min_epoch_mult()), (1, 1));
    assert_eq!((cap0.max_epoch_scale(), cap0.max_epoch_mult()), (5, 100));
    for (scale, mult) in [(1, 1), (2, 7), (4, 1), (5, 100), (4, 1000), (3, 4095)] {
        assert_eq!(try_epoch(scale, mult), (true, Ok(())), "{scale}x{mult}");
    }
    // 100 s + 1 s, 409.5 s, 10 ms x 4095 (40.95 s) is fine but 100 ms x 1001 is not.
    for (scale, mult) in [(5, 101), (5, 4095), (4, 1001)] {
        let (on, why) = try_epoch(scale, mult);
        assert!(!on, "{scale}x{mult} enabled");
        assert!(matches!(why, Err(Refusal::Epoch { .. })), "{why:?}");
    }
    for scale in [0u8, 6, 15] {
        assert_eq!(
            try_epoch(scale, 1),
            (false, Err(Refusal::EpochScale(scale)))
        );
    }
    assert!(matches!(
        try_epoch(1, 0),
        (false, Err(Refusal::Epoch { .. }))
    ));
}

#[test]
fn each_out_of_range_field_refuses_the_enable() {
    type Edit = fn(&mut ChmuBlock, u64) -> ChmuCfg0;
    let cases: [(Edit, Refusal); 6] = [
        (|_, _| ChmuCfg0::new(), Refusal::RequestType(0)),
        (
            |_, _| ChmuCfg0::new().with_m2s_req_type(7),
            Refusal::RequestType(7),
        ),
        (
            |b, base| {
                configure(b, base, 40);
                all_requests()
            },
            Refusal::UnitSize(40),
        ),
        (
            |b, base| {
                let c = ChmuCfg1::from(b.get(base + CHMU_CFG1)).with_unit_size(7);
                wr(b, base + CHMU_CFG1, c.into());
                all_requests()
            },
            Refusal::UnitSize(7),
        ),
        (
            |_, _| all_requests().with_threshold(0xffff),
            Refusal::Threshold(0xffff),
        ),
        (
            |b, base| {
                b.mmio_write(base + CHMU_RANGE_BITMAP, &[0]);
                all_requests()
            },
            Refusal::EmptyRange,
        ),
    ];
    for (edit, want) in cases {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        let base = b.config().instance_base(0);
        configure(&mut b, base, 12);
        let cfg0 = edit(&mut b, base);
        wr(&mut b, base + CHMU_CFG0, cfg0.into());
        assert_eq!(b.check_enable(0), Err(want));
        assert!(!enable(&mut b, base, cfg0), "{want} enabled");
        assert!(!ChmuCfg0::from(rd(&mut b, base + CHMU_CFG0)).enable());
        assert_eq!(b.counters().invalid_configs, 1, "{want}");
    }
}

#[test]
fn unsupported_down_sampling_factors_and_reserved_bitmap_bits_refuse() {
    let mut b = ChmuBlock::new(ChmuConfig {
        downsampling: 0b101,
        capacity: 1 << 30,
        ..ChmuConfig::default()
    });
    let base = b.config().instance_base(0);
    configure(&mut b, base, 12);
    let cfg1 = ChmuCfg1::from(b.get(base + CHMU_CFG1));
    wr(&mut b, base + CHMU_CFG1, cfg1.with_downsampling(1).into());
    assert!(!enable(&mut b, base, all_requests()));
    assert_eq!(b.check_enable(0), Err(Refusal::DownSampling(1)));
    wr(&mut b, base + CHMU_CFG1, cfg1.with_downsampling(2).into());
    assert!(enable(&mut b, base, all_requests()));
    // 1 GiB: four bitmap bits; the fifth is reserved and does not stick.
    let mut b = ChmuBlock::new(ChmuConfig {
        capacity: 1 << 30,
        ..ChmuConfig::default()
    });
    configure(&mut b, base, 12);
    b.mmio_write(base + CHMU_RANGE_BITMAP, &[0xf0]);
    assert_eq!(rd(&mut b, base + CHMU_RANGE_BITMAP) & 0xff, 0x00);
    wr(&mut b, base + CHMU_CFG0, all_requests().into());
    assert_eq!(b.check_enable(0), Err(Refusal::EmptyRange));
}

#[test]
fn tail_is_writable_only_while_disabled_and_head_writable_as_u16() {
    let mut b = ChmuBlock::new(ChmuConfig::default());
    let base = b.config().instance_base(0);
    b.mmio_write(base + CHMU_HOTLIST_TAIL, &7u16.to_le_bytes());
    b.mmio_write(base + CHMU_HOTLIST_HEAD, &5u16.to_le_bytes());
    assert_eq!(b.head_tail(0), (5, 7));
    configure(&mut b, base, 12);
    assert!(enable(&mut b, base, all_requests()));
    b.mmio_write(base + CHMU_HOTLIST_HEAD, &0x0009_0003u32.to_le_bytes());
    let mut t = [0u8; 2];
    b.mmio_read(base + CHMU_HOTLIST_TAIL, &mut t);
    assert_eq!((b.head_tail(0).0, u16::from_le_bytes(t)), (3, 7));
}

#[test]
fn hotlist_entries_read_through_the_registers_at_cap3() {
    for mapped in [false, true] {
        let mut b = ChmuBlock::new(ChmuConfig::default());
        if mapped {
            b.set_hotlist_memory(Box::new(VecHotlist::new(2, 1024)));
        }
        b.write_hotlist(1, 3, 0xabcd_0001);
        let base = b.config().instance_base(1);
        let at = base + rd(&mut b, base + CHMU_CAP3);
        assert_eq!(rd(&mut b, at + 3 * 8), 0xabcd_0001, "mapped {mapped}");
        let mut half = [0u8; 4];
        b.mmio_read(at + 3 * 8 + 4, &mut half);
        assert_eq!(half, [0; 4]);
        b.mmio_read(at + 3 * 8, &mut half);
        assert_eq!(u32::from_le_bytes(half), 0xabcd_0001);
        // Entries are read-only to the host.
        wr(&mut b, at + 3 * 8, 0);
        assert_eq!(b.read_hotlist(1, 3), 0xabcd_0001);
    }
}

#[test]
fn a_hotlist_window_moves_cap3_past_the_block() {
    let cfg = ChmuConfig {
        hotlist_window: Some(CHMU_HOTLIST_WINDOW),
        ..ChmuConfig::default()
    };
    let mut b = ChmuBlock::new(cfg.clone());
    for i in 0..2u8 {
        let base = cfg.instance_base(i);
        let cap3 = rd(&mut b, base + CHMU_CAP3);
        assert_eq!(
            CHMU_BLOCK_OFFSET + base + cap3,
            CHMU_HOTLIST_WINDOW + u64::from(i) * 8192
        );
    }
    b.write_hotlist(1, 3, 0xabcd);
    assert_eq!(b.read_hotlist(1, 3), 0xabcd);
    let mut d = [0u8; 8];
    b.window_read(8192 + 3 * 8, &mut d);
    assert_eq!(u64::from_le_bytes(d), 0xabcd);
    b.window_read(u64::MAX - 7, &mut d);
    assert_eq!(d, [0; 8]);
}

#[test]
fn oversized_hotlists_are_reduced_to_fit_the_block() {
    let b = ChmuBlock::new(ChmuConfig {
        instances: 2,
        hotlist_size: u16::MAX,
        ..ChmuConfig::default()
    });
    let c = b.config();
    assert_eq!(c.hotlist_size, 3072);
    assert!(c.instance_base(2) <= CHMU_BLOCK_SIZE);
}

#[test]
fn capabilities_are_read_only() {
    let mut b = ChmuBlock::new(ChmuConfig::default());
    wr(&mut b, CHMU_COMMON_CAP0, 0);
    let base = b.config().instance_base(0);
    wr(&mut b, base + CHMU_CAP3, 0);
    assert_eq!(
        CommonCap0::from(rd(&mut b, CHMU_COMMON_CAP0)).num_instances(),
        2
    );
    assert_eq!(rd(&mut b, base + CHMU_CAP3), 0xff0);
}

#[test]
fn misaligned_and_out_of_block_accesses_are_guest_errors() {
    let mut b = ChmuBlock::new(ChmuConfig::default());
    let mut d = [0xffu8; 4];
    b.mmio_read(2, &mut d);
    assert_eq!(d, [0; 4]);
    b.mmio_write(CHMU_BLOCK_SIZE - 4, &[0; 8]);
    b.mmio_write(u64::MAX - 3, &[0; 4]);
    assert_eq!(b.counters().guest_errors, 3);
}

#[test]
fn overflow_interrupts_on_its_rising_edge_until_the_host_clears_it() {
    use crate::core::state::Event;
    let mut b = ChmuBlock::new(ChmuConfig::default());
    let base = b.config().instance_base(0);
    configure(&mut b, base, 12);
    let before = b.counters().clone();
    assert!(enable(
        &mut b,
        base,
        all_requests().with_overflow_int_en(true)
    ));
    assert_eq!(b.apply(0, Event::HotlistFull), Some(0));
    assert_eq!(b.apply(0, Event::HotlistFull), None, "already latched");
    // Write 1 to clear (STATUS[40]); every other bit written as 1 too, none sticks.
    wr(&mut b, base + CHMU_STATUS, u64::MAX);
    let st = ChmuStatus::from(rd(&mut b, base + CHMU_STATUS));
    assert!(!st.overflow() && st.enabled() && st.counter_width() == 16);
    assert_eq!(b.apply(0, Event::HotlistFull), Some(0));
    let d = b.counters().delta(&before);
    assert_eq!((d.enables, d.mmio_writes, d.invalid_configs), (1, 2, 0));
}

#[test]
fn disable_and_reset_counters_restart_counting_and_leave_the_bits_clear() {
    let mut b = ChmuBlock::new(ChmuConfig::default());
    let base = b.config().instance_base(1);
    configure(&mut b, base, 12);
    assert!(enable(&mut b, base, all_requests()));
    let (g, before) = (b.generation(1), b.counters().clone());
    wr(
        &mut b,
        base + CHMU_CFG0,
        all_requests()
            .with_reset_counters(true)
            .with_enable(true)
            .into(),
    );
    let cfg0 = ChmuCfg0::from(rd(&mut b, base + CHMU_CFG0));
    assert!(
        cfg0.enable() && !cfg0.reset_counters(),
        "the action bit reads back 0"
    );
    assert!(b.generation(1) > g);
    wr(&mut b, base + CHMU_CFG0, all_requests().into());
    assert_eq!(b.state(1), crate::core::state::State::Disabled);
    let d = b.counters().delta(&before);
    assert_eq!((d.counter_resets, d.disables, d.enables), (1, 1, 0));
    assert_eq!(
        b.state(0),
        crate::core::state::State::Disabled,
        "other instance"
    );
}

/// Every row of the register table, in every instance, through MMIO: reads its reset value,
/// and after all-ones and all-zeros writes holds exactly what its masks allow (CFG0 is left
/// to the state machine tests: its hook acts on the write).
#[test]
fn every_register_behaves_as_its_table_row_says() {
    use crate::spec::chmu_table::{Scope, REGISTERS};
    let c = ChmuConfig::default().fitted();
    let mut b = ChmuBlock::new(c.clone());
    let hooked =
        |r: &&crate::spec::chmu_table::ChmuReg| r.scope == Scope::Instance && r.offset == CHMU_CFG0;
    for r in REGISTERS.iter().filter(|r| !hooked(r)) {
        let places: Vec<(u64, u8)> = match r.scope {
            Scope::Common => vec![(r.offset, 0)],
            Scope::Instance => (0..c.instances)
                .map(|i| (c.instance_base(i) + r.offset, i))
                .collect(),
        };
        let w = usize::from(r.width);
        let width_bits = u64::MAX >> (64 - 8 * w);
        for (at, i) in places {
            let read = |b: &mut ChmuBlock| {
                let mut d = [0u8; 8];
                b.mmio_read(at, &mut d[..w]);
                u64::from_le_bytes(d)
            };
            let reset = r.reset.value(&c, i) & width_bits;
            assert_eq!(read(&mut b), reset, "{} of instance {i}", r.name);
            b.mmio_write(at, &u64::MAX.to_le_bytes()[..w]);
            let ones = ((reset & !r.wmask) | r.wmask) & !r.w1c & width_bits;
            assert_eq!(read(&mut b), ones, "{} after all ones", r.name);
            b.mmio_write(at, &[0u8; 8][..w]);
            assert_eq!(read(&mut b), ones & !r.wmask, "{} after zeros", r.name);
        }
    }
}
