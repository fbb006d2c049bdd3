//! The one-time enrollment token.
//!
//! A token is a public 128-bit id (the host looks the token up by it) and a
//! 256-bit secret (the host stores only its SHA-256 and compares digests in
//! constant time). Text form: `rvt1-<32 hex id>-<64 hex secret>`.
//!
//! `Debug` shows neither id nor secret, so a token can sit in a struct that is
//! logged without leaking.

use std::fmt;

/// Length of the public token id in bytes.
pub const TOKEN_ID_LEN: usize = 16;
/// Length of the token secret in bytes (256 bits).
pub const TOKEN_SECRET_LEN: usize = 32;
/// Prefix of the text form; the digit is the token format version.
pub const TOKEN_PREFIX: &str = "rvt1-";

/// A one-time enrollment token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Public lookup key; appears in host logs.
    pub id: [u8; TOKEN_ID_LEN],
    /// The secret; never logged, stored by the host only as a digest.
    pub secret: [u8; TOKEN_SECRET_LEN],
}

/// Why a token's text form was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    /// The text does not start with `rvt1-`.
    #[error("token does not start with {TOKEN_PREFIX:?} (wrong format version?)")]
    Prefix,
    /// The id or secret part is missing or not hex of the right length.
    #[error("token is not of the form rvt1-<32 hex digits>-<64 hex digits>")]
    Shape,
}

impl Token {
    /// The id as hex, safe to log.
    pub fn id_hex(&self) -> String {
        crate::hex::encode(&self.id)
    }

    /// The text form, for the keyfile only.
    pub fn to_text(&self) -> String {
        format!(
            "{TOKEN_PREFIX}{}-{}",
            crate::hex::encode(&self.id),
            crate::hex::encode(&self.secret)
        )
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self, TokenFormatError> {
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenFormatError::Prefix)?;
        let (id, secret) = rest.split_once('-').ok_or(TokenFormatError::Shape)?;
        Ok(Token {
            id: crate::hex::decode_exact(id).ok_or(TokenFormatError::Shape)?,
            secret: crate::hex::decode_exact(secret).ok_or(TokenFormatError::Shape)?,
        })
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        // Wiped when the token leaves memory (enrollment is done with it).
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither part: logs must carry no token bytes at all.
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_redaction() {
        let t = Token {
            id: [7; 16],
            secret: [0xab; 32],
        };
        let text = t.to_text();
        assert_eq!(Token::parse(&text), Ok(t.clone()));
        assert!(!format!("{t:?}").contains("abab"));
        assert_eq!(Token::parse("rvt2-00"), Err(TokenFormatError::Prefix));
        assert_eq!(Token::parse("rvt1-00-11"), Err(TokenFormatError::Shape));
        assert_eq!(
            Token::parse(&text[..text.len() - 1]),
            Err(TokenFormatError::Shape)
        );
    }
}
