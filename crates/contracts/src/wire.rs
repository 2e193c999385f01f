//! The Confluent wire format: magic byte `0`, the writer schema's registry id as a 4-byte
//! big-endian integer, then the Avro binary datum.

use crate::error::CodecError;

/// The first byte of every Confluent-framed record.
pub const MAGIC_BYTE: u8 = 0;

/// Length of the header before the Avro datum.
pub const HEADER_LEN: usize = 5;

/// Writes the header for schema `id` into `buf` (which should be empty).
pub fn write_header(buf: &mut Vec<u8>, id: u32) {
    buf.push(MAGIC_BYTE);
    buf.extend_from_slice(&id.to_be_bytes());
}

/// Splits a framed record into its schema id and Avro body.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    let Some((&magic, rest)) = bytes.split_first() else {
        return Err(CodecError::Truncated { len: 0 });
    };
    if magic != MAGIC_BYTE {
        return Err(CodecError::BadMagic { found: magic });
    }
    let Some((id_bytes, body)) = rest.split_first_chunk::<4>() else {
        return Err(CodecError::Truncated { len: bytes.len() });
    };
    Ok((u32::from_be_bytes(*id_bytes), body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trip_and_errors() {
        let mut buf = Vec::new();
        write_header(&mut buf, 0x0102_0304);
        buf.extend_from_slice(b"body");
        assert_eq!(buf[..5], [0, 1, 2, 3, 4]);
        assert_eq!(split(&buf).expect("split"), (0x0102_0304, &b"body"[..]));
        assert!(matches!(split(&[]), Err(CodecError::Truncated { len: 0 })));
        assert!(matches!(
            split(&[0, 1, 2]),
            Err(CodecError::Truncated { len: 3 })
        ));
        assert!(matches!(
            split(b"{\"a\":1}"),
            Err(CodecError::BadMagic { found: b'{' })
        ));
    }

    proptest! {
        #[test]
        fn split_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = split(&bytes);
        }
    }
}
