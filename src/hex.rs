//! Bytes as lower-case hex: the form digests and generated secrets are written in.

/// `bytes` as lower-case hex, two characters a byte.
pub fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_byte_is_two_lower_case_digits() {
        assert_eq!(super::lower_hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(super::lower_hex(&[]), "");
    }
}
