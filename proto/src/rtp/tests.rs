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
