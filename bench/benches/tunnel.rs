//! Micro-benchmarks of the tunnel's hot path: frame encode/decode, seal and
//! open per record size, buffer recycling (the data plane's buffer pool:
//! receive chunks reclaimed once their records are dropped, send batches
//! swapped with a spare), and fan-out enqueue to N viewers. Throughput is
//! reported per byte so sizes compare directly.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use revtun_proto::channel::{Deframer, Framer};
use revtun_proto::fanout::{Meta, ViewerQueue};
use revtun_proto::frame::{self, Frame};
use revtun_proto::record::{keys, Side, RECORD_HEADER_LEN, TAG_LEN};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn secrets() -> [u8; 64] {
    std::array::from_fn(|i| i as u8)
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let mut buf = Vec::new();
    frame::encode(
        &Frame::Window {
            stream: 7,
            increment: 65536,
        },
        &mut buf,
    );
    frame::encode_data(7, &[0u8; 16 * 1024], &mut buf);
    g.throughput(Throughput::Elements(2));
    g.bench_function("decode window+data", |b| {
        b.iter(|| {
            let (_, next) = frame::decode(black_box(&buf), 0).expect("valid");
            frame::decode(&buf, next).expect("valid")
        })
    });
    g.bench_function("encode window", |b| {
        let mut out = Vec::with_capacity(64);
        b.iter(|| {
            out.clear();
            frame::encode(
                black_box(&Frame::Window {
                    stream: 7,
                    increment: 65536,
                }),
                &mut out,
            )
        })
    });
    g.finish();
}

fn seal_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    for size in [1024usize, 16 * 1024, 64 * 1024, 256 * 1024] {
        g.throughput(Throughput::Bytes(size as u64));
        let (mut tx, _) = keys(&secrets(), Side::Host, u64::MAX);
        let mut rec = vec![0u8; RECORD_HEADER_LEN + size + TAG_LEN];
        g.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            b.iter(|| tx.seal(black_box(&mut rec)))
        });
        // Open needs fresh ciphertext per call: batch-seal a ring of records.
        let (mut stx, _) = keys(&secrets(), Side::Host, u64::MAX);
        let (_, mut rx) = keys(&secrets(), Side::Site, u64::MAX);
        g.bench_with_input(BenchmarkId::new("seal+open", size), &size, |b, _| {
            b.iter(|| {
                stx.seal(&mut rec);
                rx.open(black_box(&mut rec)).expect("authentic")
            })
        });
    }
    g.finish();
}

fn framer_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    let payload = 64 * 1024;
    g.throughput(Throughput::Bytes((16 * payload) as u64));
    let (tx, _) = keys(&secrets(), Side::Host, u64::MAX);
    let (_, rx) = keys(&secrets(), Side::Site, u64::MAX);
    let mut f = Framer::new(tx);
    let mut d = Deframer::new(rx);
    let mut spare = Vec::new();
    g.bench_function("16 x 64 KiB frames: slot, seal, deframe, open", |b| {
        b.iter(|| {
            for _ in 0..16 {
                let slot = f.data_slot(1, payload);
                slot[0] = 1;
                f.commit_data(1, payload);
            }
            let (buf, len) = f.take(std::mem::take(&mut spare));
            d.push(&buf[..len]);
            while let Some(r) = d.next_record().expect("authentic") {
                black_box(r);
            }
            spare = buf;
        })
    });
    g.finish();
}

/// Get and put of the data plane's recycled buffers, next to a fresh
/// allocation of the same size.
fn buffer_pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("buffer pool");
    let (tx, _) = keys(&secrets(), Side::Host, u64::MAX);
    let (_, rx) = keys(&secrets(), Side::Site, u64::MAX);
    let mut f = Framer::new(tx);
    let mut d = Deframer::new(rx);
    // The next sealed record, each with the next counter (not timed).
    let mut next_record = move || {
        let slot = f.data_slot(1, 1);
        slot[0] = 7;
        f.commit_data(1, 1);
        let (buf, len) = f.take(Vec::new());
        buf[..len].to_vec()
    };
    // Warm up to the full chunk size, as on a busy tunnel.
    for _ in 0..4096 {
        d.push(&next_record());
        while let Some(r) = d.next_record().expect("authentic") {
            black_box(r);
        }
    }
    g.bench_function(
        "rx chunk: get (read_buf), fill, open a 1-byte record, put (drop it)",
        |b| {
            b.iter_batched(
                &mut next_record,
                |record| {
                    let room = d.read_buf();
                    room[..record.len()].copy_from_slice(&record);
                    d.advance(record.len());
                    let r = d.next_record().expect("authentic").expect("whole record");
                    black_box(&r);
                    drop(r);
                    record
                },
                BatchSize::SmallInput,
            )
        },
    );
    let (tx, _) = keys(&secrets(), Side::Host, u64::MAX);
    let mut f = Framer::new(tx);
    let mut spare = Vec::new();
    g.bench_function(
        "tx batch: get (take with spare), put (return as spare)",
        |b| {
            b.iter(|| {
                f.push_frame(&Frame::Ping(1));
                let (buf, len) = f.take(std::mem::take(&mut spare));
                black_box(&buf[..len]);
                spare = buf;
            })
        },
    );
    g.bench_function("baseline: allocate, touch and free a 256 KiB buffer", |b| {
        b.iter(|| {
            let mut v = vec![0u8; 256 * 1024];
            // Touch every page, as a read into a fresh chunk would.
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            black_box(&v);
        })
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    // The data plane's handle: one Arc per access unit, cloned per viewer.
    let frame = Arc::new(Bytes::from(vec![0u8; 40 * 1024]));
    for viewers in [10usize, 100, 1000] {
        g.throughput(Throughput::Elements(viewers as u64));
        let now = Instant::now();
        let mut qs: Vec<ViewerQueue<Arc<Bytes>>> = (0..viewers)
            .map(|_| ViewerQueue::new(8 << 20, Duration::from_secs(2), now))
            .collect();
        let meta = Meta {
            keyframe: true,
            bytes: frame.len(),
            at: now,
        };
        g.bench_with_input(
            BenchmarkId::new("enqueue one access unit", viewers),
            &viewers,
            |b, _| {
                b.iter(|| {
                    for q in qs.iter_mut() {
                        q.offer(meta, frame.clone());
                        black_box(q.pop(now));
                    }
                })
            },
        );
    }
    g.finish();
}

criterion_group!(
    benches,
    frames,
    seal_open,
    framer_round_trip,
    buffer_pool,
    fanout
);
criterion_main!(benches);
