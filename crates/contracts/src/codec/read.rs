//! Avro binary decoding written by hand, for the payloads a stage reads once per record.
//!
//! serde's path through `serde_avro_fast` walks the schema at run time (a name lookup per field,
//! a visitor per record, map and sequence): about 12,500 instructions for one of silver's inputs
//! and 14,800 for one of gold's, more than the rest of either stage's transformation (callgrind,
//! `benches/benches/transform.rs`; by hand 8,400 and 9,600). A payload type may instead read its
//! datum here, field by field in its schema's order ([`crate::types::Contract::avro_reader`]).
//!
//! Guarantees and limits:
//! - Never panics, whatever the bytes: every read checks what is left and returns a
//!   [`ReadError`] that says what was wrong (the codec turns it into `corrupt_avro`).
//! - Bounded: nothing is allocated before the bytes that back it are known to be there. A
//!   string's length must fit in the bytes left; an array or map block may not announce more
//!   items than bytes left (every item of the types read here takes at least one byte), so a
//!   forged count cannot spin, and at most 256 items are reserved ahead of reading them: what a
//!   record can make is proportional to its size, itself capped by
//!   `stage.limits.max_record_bytes`.
//! - Reads exactly what serde's path reads for the type's compiled-in current schema: a property
//!   test per type decodes valid and damaged records both ways and compares the outcomes
//!   (`codec/tests.rs`). Stricter in one place: a `long` whose tenth byte carries bits past 64 is
//!   refused, not truncated.
//! - Only for the compiled-in schema: a record written with another schema goes through the
//!   codec's resolving path, never here.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::types::{Envelope, EventSource};

/// The most array items reserved ahead of reading them; longer arrays grow as they are read.
const RESERVE_AT_MOST: usize = 256;

/// What was wrong with a datum read by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The bytes ended inside a value.
    #[error("the datum ends inside a {0}")]
    Ends(&'static str),
    /// A `long` ran past ten bytes or past 64 bits.
    #[error("a long does not fit in 64 bits")]
    LongOverflow,
    /// A string's length, or an array or map block's count, is negative or longer than what is
    /// left.
    #[error("a {what} announces {len} but only {left} bytes are left")]
    Length {
        /// What the length was of.
        what: &'static str,
        /// The length read.
        len: i64,
        /// The bytes left in the datum.
        left: usize,
    },
    /// A string is not UTF-8.
    #[error("a string is not valid UTF-8")]
    Utf8,
    /// A string with logical type `uuid` does not parse as one.
    #[error("{0:?} is not a uuid")]
    Uuid(String),
    /// A `["null", T]` union's branch is neither 0 nor 1.
    #[error("union branch {0} does not exist (0 is null, 1 the value)")]
    Branch(i64),
}

/// Reads Avro values off the front of a datum.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], ReadError> {
        if len > self.rest.len() {
            return Err(ReadError::Ends(what));
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    /// Reads a `long` (or `int`): a base-128 varint of at most ten bytes, then zig-zag.
    pub fn long(&mut self) -> Result<i64, ReadError> {
        let mut value = 0u64;
        for (index, byte) in self.rest.iter().enumerate() {
            let bits = u64::from(byte & 0x7f);
            if index == 9 && bits > 1 {
                return Err(ReadError::LongOverflow);
            }
            value |= bits << (7 * index);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[index + 1..];
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
            if index == 9 {
                return Err(ReadError::LongOverflow);
            }
        }
        Err(ReadError::Ends("long"))
    }

    /// Reads a length that must be non-negative and at most the bytes left.
    fn length(&mut self, what: &'static str) -> Result<usize, ReadError> {
        let len = self.long()?;
        let left = self.rest.len();
        match usize::try_from(len) {
            Ok(fits) if fits <= left => Ok(fits),
            _ => Err(ReadError::Length { what, len, left }),
        }
    }

    /// Reads a `string`, borrowed from the datum.
    pub fn str(&mut self) -> Result<&'a str, ReadError> {
        let len = self.length("string")?;
        let bytes = self.take(len, "string")?;
        std::str::from_utf8(bytes).map_err(|_| ReadError::Utf8)
    }

    /// Reads a `string`.
    pub fn string(&mut self) -> Result<String, ReadError> {
        self.str().map(str::to_owned)
    }

    /// Reads a `double`: 8 bytes, little-endian.
    pub fn double(&mut self) -> Result<f64, ReadError> {
        let bytes = self.take(8, "double")?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(f64::from_le_bytes(array))
    }

    /// Reads a `string` with logical type `uuid` (any form `Uuid::parse_str` takes, as serde's
    /// path does).
    pub fn uuid(&mut self) -> Result<Uuid, ReadError> {
        let text = self.str()?;
        Uuid::parse_str(text).map_err(|_| ReadError::Uuid(text.chars().take(64).collect()))
    }

    /// Reads a `["null", T]` union: `None` for branch 0, else `read`'s value.
    pub fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, ReadError>,
    ) -> Result<Option<T>, ReadError> {
        match self.long()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            branch => Err(ReadError::Branch(branch)),
        }
    }

    /// Reads the item count of the next array or map block: 0 ends the value; a negative
    /// count is followed by the block's size in bytes, which is skipped.
    fn block(&mut self, what: &'static str) -> Result<usize, ReadError> {
        let count = self.long()?;
        let count = if count < 0 {
            self.long()?;
            count.checked_neg().ok_or(ReadError::Length {
                what,
                len: count,
                left: self.rest.len(),
            })?
        } else {
            count
        };
        let left = self.rest.len();
        match usize::try_from(count) {
            Ok(fits) if fits <= left => Ok(fits),
            _ => Err(ReadError::Length {
                what,
                len: count,
                left,
            }),
        }
    }

    /// Reads an `array` whose items `item` reads.
    pub fn array<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, ReadError>,
    ) -> Result<Vec<T>, ReadError> {
        let mut items = Vec::new();
        loop {
            let count = self.block("array block")?;
            if count == 0 {
                return Ok(items);
            }
            // Room for what the count announces, up to a point: a forged count backed by
            // one-byte items must not reserve item-sized memory for each of them up front.
            items.reserve(count.min(RESERVE_AT_MOST));
            for _ in 0..count {
                items.push(item(self)?);
            }
        }
    }

    /// Reads a `map` whose values `value` reads (a repeated key keeps its last value).
    pub fn map<V>(
        &mut self,
        mut value: impl FnMut(&mut Self) -> Result<V, ReadError>,
    ) -> Result<BTreeMap<String, V>, ReadError> {
        let mut map = BTreeMap::new();
        loop {
            let count = self.block("map block")?;
            if count == 0 {
                return Ok(map);
            }
            for _ in 0..count {
                let key = self.string()?;
                map.insert(key, value(self)?);
            }
        }
    }

    /// Reads a `{"type": "map", "values": "string"}`.
    pub fn string_map(&mut self) -> Result<BTreeMap<String, String>, ReadError> {
        self.map(Self::string)
    }

    /// Reads a whole envelope, fields in the schemas' order, with `payload` reading its body.
    pub fn envelope<P>(
        &mut self,
        payload: fn(&mut Reader<'a>) -> Result<P, ReadError>,
    ) -> Result<Envelope<P>, ReadError> {
        Ok(Envelope {
            event_id: self.uuid()?,
            event_type: self.string()?,
            event_version: self.string()?,
            timestamp: self.long()?,
            source: EventSource {
                service: self.string()?,
                instance: self.string()?,
            },
            correlation_id: self.optional(Self::uuid)?,
            causation_id: self.optional(Self::uuid)?,
            org_id: self.long()?,
            payload: payload(self)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::write;

    #[test]
    fn longs_read_back_what_the_writer_wrote() {
        for value in [0i64, -1, 1, -64, 64, 300, -300, i64::MAX, i64::MIN] {
            let mut buf = Vec::new();
            write::long(&mut buf, value);
            let mut reader = Reader::new(&buf);
            assert_eq!(reader.long(), Ok(value));
            assert!(reader.rest().is_empty());
        }
    }

    #[test]
    fn a_long_past_64_bits_or_ten_bytes_is_refused() {
        let mut eleven = vec![0xffu8; 10];
        eleven.push(0x01);
        assert_eq!(Reader::new(&eleven).long(), Err(ReadError::LongOverflow));
        let mut wide = vec![0xffu8; 9];
        wide.push(0x02);
        assert_eq!(Reader::new(&wide).long(), Err(ReadError::LongOverflow));
        assert_eq!(
            Reader::new(&[0x80, 0x80]).long(),
            Err(ReadError::Ends("long"))
        );
        assert_eq!(Reader::new(&[]).long(), Err(ReadError::Ends("long")));
    }

    #[test]
    fn lengths_and_counts_past_the_bytes_left_are_refused_before_any_allocation() {
        let mut forged = Vec::new();
        write::long(&mut forged, i64::MAX);
        assert!(matches!(
            Reader::new(&forged).string(),
            Err(ReadError::Length { what: "string", .. })
        ));
        assert!(matches!(
            Reader::new(&forged).array(Reader::string),
            Err(ReadError::Length { .. })
        ));
        let mut negative = Vec::new();
        write::long(&mut negative, -5);
        assert!(matches!(
            Reader::new(&negative).string(),
            Err(ReadError::Length { len: -5, .. })
        ));
        // A negative block count is followed by the block's size; i64::MIN has no positive.
        let mut min = Vec::new();
        write::long(&mut min, i64::MIN);
        write::long(&mut min, 0);
        assert!(matches!(
            Reader::new(&min).string_map(),
            Err(ReadError::Length { .. })
        ));
    }

    #[test]
    fn blocks_with_negative_counts_and_several_blocks_are_read() {
        let mut buf = Vec::new();
        write::long(&mut buf, -2);
        write::long(&mut buf, 4);
        write::string(&mut buf, "a");
        write::string(&mut buf, "b");
        write::long(&mut buf, 1);
        write::string(&mut buf, "c");
        write::long(&mut buf, 0);
        let mut reader = Reader::new(&buf);
        assert_eq!(
            reader.array(Reader::string),
            Ok(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()])
        );
        assert!(reader.rest().is_empty());
    }

    #[test]
    fn bad_strings_unions_and_uuids_say_what_they_are() {
        assert_eq!(Reader::new(&[2, 0xff]).str(), Err(ReadError::Utf8));
        assert_eq!(
            Reader::new(&[4]).optional(Reader::long),
            Err(ReadError::Branch(2))
        );
        let mut buf = Vec::new();
        write::string(&mut buf, "not-a-uuid");
        assert_eq!(
            Reader::new(&buf).uuid(),
            Err(ReadError::Uuid("not-a-uuid".to_owned()))
        );
        assert_eq!(
            Reader::new(&[1, 2]).double(),
            Err(ReadError::Ends("double"))
        );
    }
}
