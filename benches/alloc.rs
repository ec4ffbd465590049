//! Benchmarks of the allocator:
//! * `alloc_sectors`: 4 KiB allocations (+ key_inserted) from 4 write points, with the
//!   background allocator thread refilling the free lists (invalidate + checkpoint + fsync).
//! * `invalidate_checkpoint_100g`: invalidating a 100 GiB cache's worth of buckets
//!   (102400 x 1 MiB) through the allocator loop, gens checkpoints (300 KiB, two fsyncs each)
//!   included. Throughput is in buckets.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-alloc cargo bench --bench alloc`

use std::time::{Duration, Instant};

use bcachefs_lite::alloc::{Allocator, KeyPos, OpenOptions, Reserve};
use bcachefs_lite::device::format::{Geometry, Replacement};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn geometry(size: u64, discard: bool) -> Geometry {
    Geometry {
        size,
        replacement: Replacement::Lru,
        discard,
        ..Geometry::default()
    }
}

fn bench_alloc_sectors(c: &mut Criterion) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bench.cache");
    Allocator::format(&p, &geometry(16 << 30, true), false).unwrap();
    let cache = Allocator::open(&p).unwrap();
    let r = cache.gc_begin();
    cache.gc_finish(r).unwrap();
    let mut g = c.benchmark_group("alloc");
    g.throughput(Throughput::Elements(1));
    let mut off = [0u64; 4];
    let mut i = 0usize;
    g.bench_function("alloc_sectors_4k", |b| {
        b.iter(|| {
            let wp = i % 4;
            i += 1;
            let key = KeyPos {
                file: wp as u64,
                offset: off[wp],
            };
            let (ptr, n) = cache.alloc_sectors(key, 8, wp as u64, true).unwrap();
            off[wp] += u64::from(n);
            cache.key_inserted(ptr).unwrap();
        })
    });
    g.finish();
}

fn bench_invalidate(c: &mut Criterion) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bench100g.cache");
    // 102400 buckets of 1 MiB after the superblock and journal.
    let size = (102_400u64 << 20) + (9 << 20);
    Allocator::format(&p, &geometry(size, false), false).unwrap();
    let cache = Allocator::open_with(
        &p,
        OpenOptions {
            start_allocator: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(cache.nbuckets() >= 102_400, "{}", cache.nbuckets());
    let r = cache.gc_begin();
    cache.gc_finish(r).unwrap();
    let n = u64::from(cache.nbuckets());
    let mut g = c.benchmark_group("invalidate");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    g.bench_function("invalidate_checkpoint_100g", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start_count = cache.stats().invalidated;
                let t = Instant::now();
                while cache.stats().invalidated - start_count < n {
                    while let Ok((b, _)) = cache.bucket_alloc(Reserve::MovingGc, false) {
                        cache.unpin(b).unwrap();
                    }
                    cache.allocator_step().unwrap();
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
    let s = cache.stats();
    eprintln!(
        "invalidated {} buckets with {} gens checkpoints ({} buckets per checkpoint)",
        s.invalidated,
        s.checkpoints,
        s.invalidated / s.checkpoints.max(1)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench_alloc_sectors, bench_invalidate
}
criterion_main!(benches);
