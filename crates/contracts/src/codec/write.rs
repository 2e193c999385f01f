//! Avro binary encoding written by hand, for the payloads a stage writes once per record.
//!
//! serde's path through `serde_avro_fast` walks the schema at run time: a name lookup per field,
//! a union match per option, a block writer per array and map. For silver's output that was 12,000
//! of the 20,000 instructions silver spends on a record (callgrind, `benches/benches/transform.rs`).
//! A payload type may instead write its datum here, field by field in its schema's order
//! ([`crate::types::Contract::avro_writer`]).
//!
//! Guarantees and limits:
//! - The bytes are exactly serde's for the type's compiled-in current schema: a test per type
//!   encodes the same values both ways and compares them byte for byte (`codec/tests.rs`), so a
//!   schema change that the writer does not follow fails there, not on the wire.
//! - Only for the compiled-in schema: a type whose schema is overridden (tests do that to play an
//!   older build) has no writer.
//! - Arrays and maps are one block (count, items, then 0), as serde's path writes them.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::types::Envelope;

/// Appends an Avro `long` (or `int`): zig-zag, then a base-128 varint.
pub fn long(buf: &mut Vec<u8>, value: i64) {
    let mut rest = ((value << 1) ^ (value >> 63)) as u64;
    while rest >= 0x80 {
        buf.push((rest as u8) | 0x80);
        rest >>= 7;
    }
    buf.push(rest as u8);
}

/// Appends a length: a `long`. Lengths here are of values in memory, far below `i64::MAX`.
fn length(buf: &mut Vec<u8>, len: usize) {
    long(buf, i64::try_from(len).unwrap_or(i64::MAX));
}

/// Appends an Avro `string`: its length in bytes, then its UTF-8 bytes.
pub fn string(buf: &mut Vec<u8>, value: &str) {
    length(buf, value.len());
    buf.extend_from_slice(value.as_bytes());
}

/// Appends an Avro `double`: 8 bytes, little-endian.
pub fn double(buf: &mut Vec<u8>, value: f64) {
    buf.extend_from_slice(&value.to_le_bytes());
}

/// Appends a `string` with logical type `uuid`: the hyphenated lower-case form.
pub fn uuid(buf: &mut Vec<u8>, value: &Uuid) {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    string(buf, value.hyphenated().encode_lower(&mut text));
}

/// Appends a `["null", T]` union: branch 0 for `None`, else branch 1 and `write`'s value.
pub fn optional<T: ?Sized>(
    buf: &mut Vec<u8>,
    value: Option<&T>,
    write: impl FnOnce(&mut Vec<u8>, &T),
) {
    match value {
        None => long(buf, 0),
        Some(inner) => {
            long(buf, 1);
            write(buf, inner);
        }
    }
}

/// Appends an `array` of `items` written by `item`.
pub fn array<T>(buf: &mut Vec<u8>, items: &[T], mut item: impl FnMut(&mut Vec<u8>, &T)) {
    if !items.is_empty() {
        length(buf, items.len());
        for value in items {
            item(buf, value);
        }
    }
    long(buf, 0);
}

/// Appends a `map` whose values `value` writes, in key order.
pub fn map<V>(
    buf: &mut Vec<u8>,
    map: &BTreeMap<String, V>,
    mut value: impl FnMut(&mut Vec<u8>, &V),
) {
    if !map.is_empty() {
        length(buf, map.len());
        for (key, item) in map {
            string(buf, key);
            value(buf, item);
        }
    }
    long(buf, 0);
}

/// Appends a `{"type": "map", "values": "string"}`.
pub fn string_map(buf: &mut Vec<u8>, strings: &BTreeMap<String, String>) {
    map(buf, strings, |buf, text| string(buf, text));
}

/// Appends a whole envelope, fields in the schemas' order, with `payload` writing its body.
pub fn envelope<P>(buf: &mut Vec<u8>, event: &Envelope<P>, payload: fn(&P, &mut Vec<u8>)) {
    uuid(buf, &event.event_id);
    string(buf, &event.event_type);
    string(buf, &event.event_version);
    long(buf, event.timestamp);
    string(buf, &event.source.service);
    string(buf, &event.source.instance);
    optional(buf, event.correlation_id.as_ref(), uuid);
    optional(buf, event.causation_id.as_ref(), uuid);
    long(buf, event.org_id);
    payload(&event.payload, buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_are_zig_zag_varints() {
        for (value, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
            (
                i64::MAX,
                vec![0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
            (
                i64::MIN,
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut buf = Vec::new();
            long(&mut buf, value);
            assert_eq!(buf, bytes, "{value}");
        }
    }

    #[test]
    fn empty_arrays_and_maps_are_one_zero() {
        let mut buf = Vec::new();
        array::<String>(&mut buf, &[], |buf, item| string(buf, item));
        string_map(&mut buf, &BTreeMap::new());
        assert_eq!(buf, vec![0, 0]);
    }
}
