//! The host's RTSP session state machine driven by viewer bytes: every
//! request the parser takes goes through `concerns` and `request`, and
//! each step the driver would answer is answered with an outcome the
//! input picks (found, not found, a multicast group, refused). Nothing
//! panics; every reply is one well-formed RTSP response that echoes a
//! numeric CSeq (of up to 10 digits, as the replies echo); a session
//! plays only with its video set up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::rtsp;
use revtun_proto::rtsp_session::{next_request, Found, Limits, Session, Step};
use revtun_proto::transport::{Offered, Wanted};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some((&choices, input)) = data.split_first() else {
        return;
    };
    let t0 = Instant::now();
    let limits = Limits {
        offered: Offered {
            udp: choices & 1 != 0,
            multicast: choices & 2 != 0,
        },
        udp_ports: (8000, 8001),
        request: Duration::from_secs(10),
        timeout: Duration::from_secs(60),
    };
    let mut s = Session::new(1, (2, 3), limits, t0);
    let mut buf = input;
    let mut k = 0u32;
    while let Ok(Some((req, used))) = next_request(buf) {
        assert!(used > 0 && used <= buf.len());
        buf = &buf[used..];
        k += 1;
        let _ = s.concerns(&req);
        let now = t0 + Duration::from_millis(u64::from(k));
        let pick = (choices >> (k % 6)) & 3;
        let mut step = s.request(&req, now);
        // Answer what the driver would answer (at most one round each).
        step = match step {
            Step::Describe { .. } => s.described(if pick == 0 { Err(404) } else { Ok("v=0\r\n") }),
            Step::Setup { transport, .. } => s.set_up(match (pick, transport) {
                (0, _) => Err(503),
                (_, Wanted::Multicast) => Ok(Found::Group {
                    ip: std::net::Ipv4Addr::new(239, 255, 0, 1),
                    ports: (8002, 8003),
                    ttl: 1,
                    ssrc: 4,
                }),
                _ => Ok(Found::Unicast),
            }),
            Step::Play { .. } => {
                assert!(s.video().is_some(), "PLAY step without a video track");
                s.played(if pick == 0 { Err(453) } else { Ok(Some((7, 9))) })
            }
            other => other,
        };
        let (Step::Reply(bytes) | Step::Close(bytes)) = step else {
            panic!("a driver step was not answered with a reply");
        };
        let (resp, n) = rtsp::parse_response(&bytes)
            .expect("a well-formed reply")
            .expect("a whole reply");
        assert_eq!(n, bytes.len());
        if let Some(c) = req
            .cseq()
            .filter(|c| (1..=10).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()))
        {
            assert_eq!(resp.header("CSeq"), Some(c));
        }
        if s.playing() {
            assert!(s.video().is_some() && s.deadline().is_none());
        }
    }
});
