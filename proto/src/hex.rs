//! Lowercase hex encoding, shared by the token and fingerprint formats.

/// Encodes bytes as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Decodes hex (either case) into exactly `N` bytes.
pub fn decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    let raw = text.as_bytes();
    if raw.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Formats a SHA-256 digest the way keyfiles and `inspect` show it.
pub fn fingerprint(digest: &[u8]) -> String {
    format!("sha256:{}", encode(digest))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let bytes = [0u8, 1, 0xab, 0xff];
        let text = super::encode(&bytes);
        assert_eq!(text, "0001abff");
        assert_eq!(super::decode_exact::<4>(&text), Some(bytes));
        assert_eq!(super::decode_exact::<4>("0001ABFF"), Some(bytes));
        assert_eq!(super::decode_exact::<4>("0001abf"), None);
        assert_eq!(super::decode_exact::<4>("0001abfg"), None);
    }
}
