//! Micro-benchmarks of the provisioning codecs: keyfile parse and the
//! enrollment message decoder (what a handshake flood makes control run).
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use revtun_proto::enroll::ClientMsg;
use revtun_proto::keyfile::{Endpoint, Keyfile};
use revtun_proto::token::Token;
use std::hint::black_box;

fn sample_keyfile() -> String {
    Keyfile {
        site: "site-a".into(),
        endpoints: vec![Endpoint {
            host: "host.example".into(),
            port: 5500,
        }],
        created: time::OffsetDateTime::UNIX_EPOCH,
        expires: time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(1),
        ca_fingerprint: format!("sha256:{}", "ab".repeat(32)),
        token: Token {
            id: [1; 16],
            secret: [2; 32],
        },
        ca_cert_pem: format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            "QUJD".repeat(100)
        ),
    }
    .to_text()
}

fn bench(c: &mut Criterion) {
    let text = sample_keyfile();
    let mut g = c.benchmark_group("keyfile");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| Keyfile::parse(black_box(text.as_bytes())))
    });
    g.finish();

    let msg = ClientMsg::Enroll {
        site: "site-a".into(),
        token: Token {
            id: [1; 16],
            secret: [2; 32],
        },
        csr_der: vec![7; 400],
    }
    .encode();
    let mut g = c.benchmark_group("enroll");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("decode", |b| b.iter(|| ClientMsg::decode(black_box(&msg))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
