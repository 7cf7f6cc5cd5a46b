//! Which partition a message goes to, computed here rather than by librdkafka, so that replay
//! detection looks in exactly the partition a message would be sent to. Keyed messages land
//! where the Java client's default partitioner puts them (murmur2, like librdkafka's
//! `murmur2_random`); keyless ones by a stable hash of their id.

use outbox_relay_core::Message;

pub(crate) fn partition_for(message: &Message, partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    match &message.key {
        Some(key) => (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions,
        None => (fnv1a(message.id.as_bytes()) % partitions as u64) as i32,
    }
}

/// Kafka's `Utils.murmur2`.
fn murmur2(data: &[u8]) -> i32 {
    const M: i32 = 0x5bd1_e995;
    let mut h: i32 = (0x9747_b28c_u32 as i32) ^ data.len() as i32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= ((k as u32) >> 24) as i32;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    if tail.len() >= 3 {
        h ^= i32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= i32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= i32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(M);
    h ^ ((h as u32) >> 15) as i32
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        for (input, expected) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(murmur2(input), expected);
        }
    }
}
