//! The UDP side of the host redirector on arbitrary bytes: `Transport`
//! headers (the choice is always one of the client's, and only an offered
//! one), RTCP compound packets (never a panic), and re-packetising camera
//! packets for UDP (every datagram within the MTU, bodies inside the
//! buffer, at most one marker per marked input packet).
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::rtp::{packetize, Codec};
use revtun_proto::transport::{choose, wanted, Offered, Wanted};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let offered = Offered {
        udp: ctl & 1 != 0,
        multicast: ctl & 2 != 0,
    };
    if let Some(w) = choose(&text, offered) {
        assert!(wanted(&text).contains(&w));
        match w {
            Wanted::Udp { .. } => assert!(offered.udp),
            Wanted::Multicast => assert!(offered.multicast),
            Wanted::Tcp { .. } => {}
        }
    }
    let _ = revtun_proto::rtcp::parse(rest);
    // Packets: split `rest` where the control byte says.
    let codec = if ctl & 4 != 0 { Codec::H265 } else { Codec::H264 };
    let mtu = 4 + usize::from(ctl >> 3) * 16;
    let step = 12 + usize::from(ctl % 64);
    let ranges: Vec<_> = (0..rest.len())
        .step_by(step)
        .map(|s| s..(s + step).min(rest.len()))
        .collect();
    let out = packetize(codec, rest, &ranges, mtu);
    for p in &out {
        assert!(p.payload_len() <= mtu.max(4) || p.prefix_len == 0);
        assert!(p.body.end <= rest.len() && p.body.start <= p.body.end);
    }
});
