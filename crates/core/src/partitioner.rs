//! Output partition selection: every record is keyed by `org_id`.
//!
//! The default rule is the one the platform's Java services use (docs/design.md, "Partitioning
//! Strategy"): `Math.abs(Long.valueOf(orgId).hashCode()) % numPartitions`. Kafka's own default
//! partitioner (murmur2 of the key bytes) can be selected instead, for topics that other Kafka
//! clients also write with their default settings.
//!
//! Guarantee: the same `org_id` always maps to the same partition for a given partition count, so
//! one org's events stay in order in one partition.
//!
//! Limit: Java's `Math.abs(Integer.MIN_VALUE)` is still negative, so the Java rule yields a
//! negative (invalid) partition for the org ids whose `Long.hashCode` is `Integer.MIN_VALUE`
//! (for example `2^31` and `i64::MAX`); a Java producer fails to send those. We use the absolute
//! value of that remainder instead (`2^31 mod partitions`), which is what the rule intends.

use serde::{Deserialize, Serialize};

/// Which rule maps an `org_id` key to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionerKind {
    /// `abs(Long.hashCode(org_id)) % partitions`, as the platform's Java services compute it.
    #[default]
    JavaLongHash,
    /// Kafka's default partitioner: `(murmur2(key bytes) & 0x7fffffff) % partitions`, where the
    /// key bytes are the decimal `org_id` the runtime writes as the record key.
    Murmur2,
}

/// Java's `Long.hashCode()`: `(int) (value ^ (value >>> 32))`.
pub fn java_long_hash_code(value: i64) -> i32 {
    let bits = value as u64;
    (bits ^ (bits >> 32)) as u32 as i32
}

/// The partition for `org_id` under the Java rule (see the module docs for the one deviation).
pub fn java_partition(org_id: i64, partitions: i32) -> i32 {
    debug_assert!(partitions > 0, "a topic has at least one partition");
    let hash = java_long_hash_code(org_id);
    // `wrapping_abs` reproduces Java's `Math.abs`, which leaves `i32::MIN` negative.
    let remainder = hash.wrapping_abs() % partitions;
    remainder.abs()
}

/// Kafka's `Utils.murmur2` (the Java client's default partitioner hash).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut hash: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        hash ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        hash ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        hash ^= u32::from(tail[0]);
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash as i32
}

/// Kafka's default partition for a key: `toPositive(murmur2(key)) % partitions`.
pub fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// The record key the runtime writes for an `org_id`: its decimal form, as UTF-8.
pub fn org_key(org_id: i64) -> String {
    OrgKey::new(org_id).as_str().to_owned()
}

/// [`org_key`] without an allocation: the decimal form of an `org_id`, held inline (an `i64`
/// has at most 20 characters, its sign included). The runtime builds one per output record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OrgKey {
    /// The digits (and sign) right-aligned: `bytes[start..]`.
    bytes: [u8; 20],
    start: u8,
}

impl OrgKey {
    /// The key of `org_id`.
    pub fn new(org_id: i64) -> Self {
        let mut bytes = [0u8; 20];
        let mut at = bytes.len();
        let mut rest = org_id.unsigned_abs();
        loop {
            at -= 1;
            // `rest % 10` is below 10: the cast keeps it whole.
            bytes[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if org_id < 0 {
            at -= 1;
            bytes[at] = b'-';
        }
        Self {
            bytes,
            // At most 20: fits.
            start: at as u8,
        }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[usize::from(self.start)..]
    }

    /// The key as text (ASCII digits and an optional sign).
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and '-' are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Debug for OrgKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OrgKey").field(&self.as_str()).finish()
    }
}

impl PartitionerKind {
    /// The partition of a record keyed by `org_id` in a topic with `partitions` partitions.
    pub fn partition(self, org_id: i64, partitions: i32) -> i32 {
        self.partition_keyed(org_id, OrgKey::new(org_id).as_bytes(), partitions)
    }

    /// [`Self::partition`] for a record whose key, `org_key(org_id)`, is already built.
    pub fn partition_keyed(self, org_id: i64, key: &[u8], partitions: i32) -> i32 {
        debug_assert_eq!(key, OrgKey::new(org_id).as_bytes());
        match self {
            PartitionerKind::JavaLongHash => java_partition(org_id, partitions),
            PartitionerKind::Murmur2 => murmur2_partition(key, partitions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_org_key_is_the_decimal_form_at_the_edges() {
        for org_id in [
            0,
            1,
            -1,
            9,
            10,
            -10,
            99,
            100,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            assert_eq!(OrgKey::new(org_id).as_str(), org_id.to_string(), "{org_id}");
        }
    }

    proptest! {
        #[test]
        fn an_org_key_is_the_decimal_form(org_id in any::<i64>()) {
            let (key, decimal) = (OrgKey::new(org_id), org_id.to_string());
            prop_assert_eq!(key.as_bytes(), decimal.as_bytes());
            prop_assert_eq!(org_key(org_id), org_id.to_string());
        }
    }

    #[test]
    fn long_hash_code_matches_java() {
        // Values as `Long.valueOf(x).hashCode()` returns them on the JVM.
        let cases: [(i64, i32); 10] = [
            (0, 0),
            (456, 456),
            (-1, 0),
            (-456, 455),
            (1 << 32, 1),
            ((1 << 32) + 5, 4),
            (1 << 31, i32::MIN),
            (i64::MAX, i32::MIN),
            (i64::MIN, i32::MIN),
            (9_876_543_210, 1_286_608_616),
        ];
        for (value, expected) in cases {
            assert_eq!(
                java_long_hash_code(value),
                expected,
                "Long.hashCode({value})"
            );
        }
    }

    #[test]
    fn java_partition_matches_java_for_ordinary_ids() {
        // `Math.abs(Long.valueOf(x).hashCode()) % 12` on the JVM.
        assert_eq!(java_partition(456, 12), 0);
        assert_eq!(java_partition(457, 12), 1);
        assert_eq!(java_partition(-456, 12), 11); // hash 455
        assert_eq!(java_partition(-457, 12), 0); // hash 456
        assert_eq!(java_partition(9_876_543_210, 12), 1_286_608_616 % 12);
        assert_eq!(java_partition((1 << 32) + 5, 6), 4);
    }

    #[test]
    fn java_min_value_hash_maps_to_a_valid_partition() {
        // Java would return -8 here; we return |-8|.
        assert_eq!(java_partition(1 << 31, 12), 8);
        assert_eq!(java_partition(i64::MAX, 12), 8);
        assert_eq!(java_partition(i64::MIN, 6), 2);
    }

    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        // From Kafka's `UtilsTest.testMurmur2`.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    proptest! {
        #[test]
        fn every_partition_is_in_range(org_id in any::<i64>(), partitions in 1i32..1000) {
            let java = PartitionerKind::JavaLongHash.partition(org_id, partitions);
            let kafka = PartitionerKind::Murmur2.partition(org_id, partitions);
            prop_assert!((0..partitions).contains(&java));
            prop_assert!((0..partitions).contains(&kafka));
        }

        #[test]
        fn java_rule_is_abs_hash_mod_partitions(org_id in any::<i64>(), partitions in 1i32..1000) {
            let hash = java_long_hash_code(org_id);
            let expected = (i64::from(hash).abs() % i64::from(partitions)) as i32;
            prop_assert_eq!(java_partition(org_id, partitions), expected);
        }
    }
}
