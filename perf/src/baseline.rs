//! `baseline`: raw loopback TCP, one stream and 8 streams. The physical
//! limit of the machine, and the denominator of every tunnel ratio.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Bytes per write and read, as a tuned bulk sender would use.
const CHUNK: usize = 1 << 20;

/// Moves bytes over `streams` loopback connections for `dur`; returns the
/// aggregate throughput in Gbit/s as measured at the receivers.
pub fn tcp_throughput(streams: usize, dur: Duration) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receivers: Vec<_> = (0..streams)
        .map(|_| -> anyhow::Result<_> {
            let tx = TcpStream::connect(addr)?;
            let (rx, _) = listener.accept()?;
            Ok((tx, rx))
        })
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let deadline = start + dur;
    let mut handles = Vec::new();
    for (mut tx, mut rx) in receivers {
        handles.push(std::thread::spawn(move || -> u64 {
            let buf = vec![0x5au8; CHUNK];
            while Instant::now() < deadline {
                if tx.write_all(&buf).is_err() {
                    break;
                }
            }
            0
        }));
        handles.push(std::thread::spawn(move || -> u64 {
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            while let Ok(n) = rx.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            total
        }));
    }
    let bytes: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let secs = start.elapsed().as_secs_f64();
    Ok(bytes as f64 * 8.0 / secs / 1e9)
}

/// Median of a non-empty sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the scenario.
pub fn run(quick: bool) -> anyhow::Result<Value> {
    let (reps, dur) = if quick {
        (1, Duration::from_millis(300))
    } else {
        (5, Duration::from_secs(2))
    };
    let mut one = Vec::new();
    let mut eight = Vec::new();
    // Interleave the two so drift hits both alike.
    for _ in 0..reps {
        one.push(tcp_throughput(1, dur)?);
        eight.push(tcp_throughput(8, dur)?);
    }
    Ok(json!({
        "what": "raw loopback TCP, 1 MiB writes",
        "repetitions": reps,
        "seconds_each": dur.as_secs_f64(),
        "one_stream_gbit_s": median(one.clone()),
        "eight_streams_gbit_s": median(eight.clone()),
        "samples": { "one": one, "eight": eight },
    }))
}
