//! RTP and payload inspection tests.

use super::*;

fn rtp(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, if marker { 0x80 | 96 } else { 96 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

#[test]
fn interleaved_frames_split_anywhere() {
    let pkt = rtp(1, 90_000, true, &[0x65, 1, 2, 3]);
    let mut frame = vec![b'$', 0];
    frame.extend_from_slice(&(pkt.len() as u16).to_be_bytes());
    frame.extend_from_slice(&pkt);
    for cut in 0..frame.len() {
        assert_eq!(interleaved(&frame[..cut]), Ok(None), "cut {cut}");
    }
    let (ch, range, used) = interleaved(&frame).expect("valid").expect("complete");
    assert_eq!((ch, used), (0, frame.len()));
    assert_eq!(&frame[range], &pkt[..]);
    assert_eq!(
        interleaved(b"RTSP/1.0 200 OK"),
        Err(RtpError::NotInterleaved)
    );
}

#[test]
fn headers_with_csrc_extension_padding() {
    let mut p = rtp(7, 1, false, &[]);
    p[0] = 0x80 | 0x20 | 0x10 | 0x01; // padding, extension, one CSRC
    p.extend_from_slice(&[0, 0, 0, 9]); // CSRC
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension, one word
    p.extend_from_slice(&[0x41, 0xaa]); // payload
    p.extend_from_slice(&[0, 0, 3]); // 3 bytes padding
    let h = parse(&p).expect("valid");
    assert_eq!(&p[h.payload], &[0x41, 0xaa]);
    assert_eq!(h.seq, 7);
    assert!(parse(&p[..11]).is_err());
    let mut v1 = p.clone();
    v1[0] = 0x40;
    assert!(parse(&v1).is_err());
    let mut bad_pad = rtp(1, 1, false, &[1]);
    bad_pad[0] |= 0x20;
    *bad_pad.last_mut().expect("non-empty") = 200;
    assert!(parse(&bad_pad).is_err());
}

#[test]
fn h264_keyframes_and_parameter_sets() {
    assert_eq!(
        inspect(Codec::H264, &[0x65]),
        PayloadInfo {
            keyframe: true,
            params: false
        }
    );
    assert_eq!(inspect(Codec::H264, &[0x41]), PayloadInfo::default());
    // STAP-A with SPS and PPS.
    let stap = [0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
    assert_eq!(
        inspect(Codec::H264, &stap),
        PayloadInfo {
            keyframe: false,
            params: true
        }
    );
    // FU-A start of an IDR; a middle fragment says nothing.
    assert!(inspect(Codec::H264, &[0x7c, 0x85, 1]).keyframe);
    assert!(!inspect(Codec::H264, &[0x7c, 0x05, 1]).keyframe);
    // Truncated STAP-A is inspected as far as it goes.
    assert_eq!(
        inspect(Codec::H264, &[0x78, 0, 9, 0x67]),
        PayloadInfo::default()
    );
    // H.265: IDR_W_RADL (19), VPS (32) in an AP (48), FU (49) start of CRA (21).
    assert!(inspect(Codec::H265, &[19 << 1, 1]).keyframe);
    assert!(inspect(Codec::H265, &[48 << 1, 1, 0, 2, 32 << 1, 1]).params);
    assert!(inspect(Codec::H265, &[49 << 1, 1, 0x80 | 21]).keyframe);
}

#[test]
fn assembler_groups_by_marker_and_timestamp() {
    let mut a = Assembler::new(Codec::H264);
    let pkts = [
        rtp(1, 100, false, &[0x78, 0, 1, 0x67, 0, 1, 0x68]),
        rtp(2, 100, false, &[0x7c, 0x85, 0]),
        rtp(3, 100, true, &[0x7c, 0x45, 0]),
        rtp(4, 200, false, &[0x41]),
        // No marker on 4: the new timestamp ends its unit.
        rtp(6, 300, true, &[0x41]),
    ];
    let mut units = Vec::new();
    for (i, p) in pkts.iter().enumerate() {
        units.extend(a.push(p, i..i + 1).expect("valid"));
    }
    assert_eq!(units.len(), 3);
    assert_eq!(units[0].packets, vec![0..1, 1..2, 2..3]);
    assert!(units[0].keyframe && units[0].params && !units[0].discontinuity);
    assert_eq!(units[1].packets, vec![3..4]);
    assert!(!units[1].keyframe);
    assert_eq!(units[2].timestamp, 300);
    assert!(units[2].discontinuity, "sequence 5 was lost");
}

/// The NAL units the UDP packets carry, reassembled as a receiver does.
fn reassemble(codec: Codec, buf: &[u8], pkts: &[UdpPacket]) -> Vec<Vec<u8>> {
    let mut nals = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    for p in pkts {
        let mut payload = p.prefix().to_vec();
        payload.extend_from_slice(&buf[p.body.clone()]);
        let (hdr, frag) = match codec {
            Codec::H264 => (1, 28),
            Codec::H265 => (2, 49),
        };
        let t = match codec {
            Codec::H264 => payload[0] & 0x1f,
            Codec::H265 => (payload[0] >> 1) & 0x3f,
        };
        if t == frag {
            let fu = payload[hdr];
            if fu & 0x80 != 0 {
                let mut h = match codec {
                    Codec::H264 => vec![(payload[0] & 0xe0) | (fu & 0x1f)],
                    Codec::H265 => vec![(payload[0] & 0x81) | ((fu & 0x3f) << 1), payload[1]],
                };
                h.extend_from_slice(&payload[hdr + 1..]);
                cur = Some(h);
            } else if let Some(c) = cur.as_mut() {
                c.extend_from_slice(&payload[hdr + 1..]);
            }
            if fu & 0x40 != 0 {
                nals.extend(cur.take());
            }
        } else {
            nals.push(payload);
        }
    }
    nals
}

#[test]
fn large_nal_units_are_fragmented_to_the_mtu_and_reassemble() {
    for codec in [Codec::H264, Codec::H265] {
        let big: Vec<u8> = match codec {
            Codec::H264 => [0x65u8]
                .into_iter()
                .chain((0..5000).map(|i| i as u8))
                .collect(),
            Codec::H265 => [0x26u8, 0x01]
                .into_iter()
                .chain((0..5000).map(|i| (i * 7) as u8))
                .collect(),
        };
        let small: Vec<u8> = match codec {
            Codec::H264 => vec![0x67, 1, 2, 3],
            Codec::H265 => vec![0x40, 0x01, 9, 9],
        };
        let mut buf = Vec::new();
        let a = rtp(1, 90, false, &small);
        let b = rtp(2, 90, true, &big);
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b);
        let ranges = vec![0..a.len(), a.len()..a.len() + b.len()];
        let pkts = packetize(codec, &buf, &ranges, 1400);
        assert!(pkts.len() >= 5, "{codec:?}: {}", pkts.len());
        assert!(pkts
            .iter()
            .all(|p| p.payload_len() <= 1400 && p.timestamp == 90));
        assert_eq!(pkts.iter().filter(|p| p.marker).count(), 1);
        assert!(pkts.last().is_some_and(|p| p.marker));
        assert_eq!(
            reassemble(codec, &buf, &pkts),
            vec![small.clone(), big.clone()],
            "{codec:?}"
        );
        // An oversized fragmentation unit is fragmented finer, the same NAL.
        let finer = packetize(codec, &buf, &ranges, 1400);
        let mut coarse_buf = Vec::new();
        let mut coarse_ranges = Vec::new();
        for (i, p) in packetize(codec, &buf, &ranges, 3000).iter().enumerate() {
            let mut payload = p.prefix().to_vec();
            payload.extend_from_slice(&buf[p.body.clone()]);
            let pkt = rtp(i as u16, 90, p.marker, &payload);
            coarse_ranges.push(coarse_buf.len()..coarse_buf.len() + pkt.len());
            coarse_buf.extend_from_slice(&pkt);
        }
        let refined = packetize(codec, &coarse_buf, &coarse_ranges, 1400);
        assert!(refined.iter().all(|p| p.payload_len() <= 1400));
        assert_eq!(
            reassemble(codec, &coarse_buf, &refined),
            reassemble(codec, &buf, &finer)
        );
    }
}

#[test]
fn an_oversized_aggregate_is_split_into_its_nal_units() {
    let n1: Vec<u8> = [0x67u8]
        .into_iter()
        .chain(std::iter::repeat_n(1, 900))
        .collect();
    let n2: Vec<u8> = [0x65u8]
        .into_iter()
        .chain(std::iter::repeat_n(2, 2000))
        .collect();
    let mut stap = vec![24u8];
    for n in [&n1, &n2] {
        stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
        stap.extend_from_slice(n);
    }
    let pkt = rtp(5, 1, true, &stap);
    let whole = std::iter::once(0..pkt.len()).collect::<Vec<_>>();
    let pkts = packetize(Codec::H264, &pkt, &whole, 1400);
    assert!(pkts.iter().all(|p| p.payload_len() <= 1400));
    assert_eq!(reassemble(Codec::H264, &pkt, &pkts), vec![n1, n2]);
    // Small packets pass as they are; garbage is dropped.
    let small = rtp(6, 1, false, &[0x41, 1, 2]);
    let mut buf = small.clone();
    buf.extend_from_slice(&[0u8; 3]);
    let out = packetize(
        Codec::H264,
        &buf,
        &[0..small.len(), small.len()..buf.len()],
        1400,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(&buf[out[0].body.clone()], &[0x41, 1, 2]);
}

#[test]
fn udp_packets_are_put_back_in_order_within_a_bound() {
    let p = |s: u16| vec![s as u8];
    let mut r = Reorder::default();
    assert_eq!(r.push(65534, p(65534)), vec![p(65534)]);
    // 0 and 1 early, 65535 fills the gap across the wrap.
    assert!(r.push(0, p(0)).is_empty());
    assert!(r.push(1, p(1)).is_empty());
    assert_eq!(r.push(65535, p(65535)), vec![p(65535), p(0), p(1)]);
    // Late and duplicate packets are dropped.
    assert!(r.push(1, p(1)).is_empty());
    assert!(r.push(65000, p(7)).is_empty());
    // A gap nothing fills: given up once more than HOLD packets wait.
    let mut out = Vec::new();
    for s in 3..(3 + Reorder::HOLD as u16 + 1) {
        out.extend(r.push(s, p(s)));
    }
    assert_eq!(out.first(), Some(&p(3)), "the gap at 2 was given up");
    assert!(r.held() <= Reorder::HOLD);
    // Flush hands over what waits, in order.
    assert!(r.push(100, p(100)).is_empty());
    assert!(r.push(99, p(99)).is_empty());
    assert_eq!(r.flush(), vec![p(99), p(100)]);
    assert_eq!(r.held(), 0);
}
