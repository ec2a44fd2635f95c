//! The binary encoding of limiter states, shared by RDB files, replication and AOF rewrites.
//!
//! ```text
//! byte 0     encoding version (2)
//! byte 1     algorithm ([`Codec::TAG`]): b'F' fixed window, b'S' sliding window, b'T' token bucket
//! then       little-endian fields, written and read by each algorithm's file
//!   F        window_end u64, count u64                                      (18 bytes)
//!   S        window u64, first u64, n u8, counts u64 x n (1..=65)           (27..=539 bytes)
//!   T        full_at u64, slack u64                                         (18 bytes)
//! ```
//!
//! Version 1 differs only in its token buckets, which carried their parameters and a level
//! (`capacity u64, rate u64, period u64, updated_at u64, level u128`, 50 bytes); it is still
//! read, and converted exactly. Decoding checks every invariant a state built by the
//! algorithms holds (`is_valid`), so a blob from a damaged file or a hand-written command can
//! never become a limiter that misbehaves.
//!
//! [`Word`] is a second, in-memory encoding: a fixed window or token bucket with usual
//! figures fits in 63 bits, which the storage layer keeps in place of a pointer.

/// The version written in byte 0.
pub const ENCODING_VERSION: u8 = 2;

/// Versions this build reads.
const READABLE: std::ops::RangeInclusive<u8> = 1..=ENCODING_VERSION;

/// The longest encoding of any state: a sliding window with all 65 buckets in use (each
/// algorithm's file asserts at compile time that its encodings fit).
pub const MAX_ENCODED_LEN: usize = 539;

/// Why a blob is not a state of the expected kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Empty, or a version this build does not know.
    UnknownVersion,
    /// A state of another algorithm (or of none this build knows).
    OtherAlgorithm,
    /// Truncated, too long, or breaking an invariant.
    Invalid,
}

/// A state with a binary encoding.
pub trait Codec: Sized {
    /// The algorithm byte.
    const TAG: u8;

    /// Appends the fields (after the two header bytes) to `out`.
    fn encode(&self, out: &mut Encoded);

    /// Reads a state written by `encode` (this version or an earlier one) and checks it.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes {
            [version, ..] if !READABLE.contains(version) => Err(DecodeError::UnknownVersion),
            [version, tag, fields @ ..] if *tag == Self::TAG => {
                Self::decode_fields(*version, &mut Fields(fields)).ok_or(DecodeError::Invalid)
            }
            [_, _, ..] => Err(DecodeError::OtherAlgorithm),
            [_] => Err(DecodeError::Invalid),
            [] => Err(DecodeError::UnknownVersion),
        }
    }

    /// Reads the fields of a `version` encoding after the two header bytes; `None` if they do
    /// not make a valid state.
    fn decode_fields(version: u8, fields: &mut Fields) -> Option<Self>;
}

/// The algorithm byte of an encoded state, if the version is known.
pub fn tag_of(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [version, tag, ..] if READABLE.contains(version) => Some(*tag),
        _ => None,
    }
}

/// A state that may fit in 63 bits: the storage layer then keeps it in place of a pointer,
/// saving an allocation per key (as Redis keeps a small integer in an object's pointer).
pub trait Word: Sized {
    /// The state as a number below 2^63, if it fits.
    fn to_word(&self) -> Option<u64> {
        None
    }

    /// The state `to_word` made this word of; `None` if it is not one.
    fn from_word(_word: u64) -> Option<Self> {
        None
    }
}

/// A word's low bits hold a time in ms (up to 2^43, the year 2248), its high bits a number.
const TIME_BITS: u32 = 43;
const NUMBER_BITS: u32 = 63 - TIME_BITS;

pub(crate) fn pack(time: u64, number: u64) -> Option<u64> {
    (time < 1 << TIME_BITS && number < 1 << NUMBER_BITS).then_some(number << TIME_BITS | time)
}

pub(crate) fn unpack(word: u64) -> Option<(u64, u64)> {
    (word < 1 << 63).then_some((word & ((1 << TIME_BITS) - 1), word >> TIME_BITS))
}

/// An encoded state, on the stack: encoding never allocates.
pub struct Encoded {
    buf: [u8; MAX_ENCODED_LEN],
    len: usize,
}

impl Encoded {
    fn start(tag: u8) -> Self {
        let mut out = Self {
            buf: [0; MAX_ENCODED_LEN],
            len: 2,
        };
        out.buf[..2].copy_from_slice(&[ENCODING_VERSION, tag]);
        out
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Encodes a state.
    pub fn of<S: Codec>(state: &S) -> Self {
        let mut out = Self::start(S::TAG);
        state.encode(&mut out);
        out
    }
}

/// The fields of an encoding, read front to back.
pub struct Fields<'a>(pub(crate) &'a [u8]);

impl Fields<'_> {
    pub(crate) fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    pub(crate) fn u128(&mut self) -> Option<u128> {
        self.take().map(u128::from_le_bytes)
    }

    /// `Some(())` if every byte was read.
    pub(crate) fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sliding::MAX_BUCKETS;
    use crate::{FixedState, SlidingState, TokenState};

    fn round_trip<S: Codec + PartialEq + std::fmt::Debug>(state: S) {
        let encoded = Encoded::of(&state);
        assert_eq!(S::decode(encoded.as_bytes()), Ok(state));
        // Every strict prefix and any extra byte are refused.
        let bytes = encoded.as_bytes();
        for len in 0..bytes.len() {
            assert!(S::decode(&bytes[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(S::decode(&longer).is_err());
    }

    #[test]
    fn states_round_trip() {
        round_trip(FixedState {
            window_end: 1_700_000_060_000,
            count: 42,
        });
        round_trip(SlidingState {
            window: 60_000,
            first: 28_333_334,
            counts: vec![3, 0, 1].into(),
        });
        round_trip(SlidingState {
            window: 6_400,
            first: 9,
            counts: vec![1; MAX_BUCKETS].into(),
        });
        round_trip(TokenState {
            full_at: 1_700_000_000_123,
            slack: 9,
        });
    }

    #[test]
    fn layout_is_fixed() {
        let bytes = Encoded::of(&FixedState {
            window_end: 0x0102,
            count: 3,
        });
        assert_eq!(
            bytes.as_bytes(),
            [2, b'F', 2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0].as_slice()
        );
        let max = SlidingState {
            window: 6_400,
            first: 9,
            counts: vec![1; MAX_BUCKETS].into(),
        };
        assert_eq!(Encoded::of(&max).as_bytes().len(), MAX_ENCODED_LEN);
    }

    #[test]
    fn refuses_other_versions_algorithms_and_invalid_states() {
        let fixed = Encoded::of(&FixedState {
            window_end: 10,
            count: 1,
        });
        assert_eq!(
            TokenState::decode(fixed.as_bytes()),
            Err(DecodeError::OtherAlgorithm)
        );
        let mut v3 = fixed.as_bytes().to_vec();
        v3[0] = 3;
        assert_eq!(FixedState::decode(&v3), Err(DecodeError::UnknownVersion));
        let v2 = fixed.as_bytes().to_vec();
        assert_eq!(FixedState::decode(b""), Err(DecodeError::UnknownVersion));
        assert_eq!(FixedState::decode(b"\x01"), Err(DecodeError::Invalid));
        let zero = Encoded::of(&FixedState {
            window_end: 10,
            count: 0,
        });
        assert_eq!(
            FixedState::decode(zero.as_bytes()),
            Err(DecodeError::Invalid)
        );
        let never = TokenState {
            full_at: 0,
            slack: 1,
        };
        assert_eq!(
            TokenState::decode(Encoded::of(&never).as_bytes()),
            Err(DecodeError::Invalid)
        );
        assert_eq!(tag_of(fixed.as_bytes()), Some(b'F'));
        assert_eq!(tag_of(&v2), Some(b'F'));
        assert_eq!(tag_of(&[3, b'F']), None);
    }

    /// A version-1 token bucket: parameters, update time and level in parts.
    fn token_v1(capacity: u64, rate: u64, period: u64, at: u64, level: u128) -> Vec<u8> {
        let mut bytes = vec![1, b'T'];
        for field in [capacity, rate, period, at] {
            bytes.extend(field.to_le_bytes());
        }
        bytes.extend(level.to_le_bytes());
        bytes
    }

    #[test]
    fn reads_version_1_token_buckets_exactly() {
        // 2 tokens, 3 per second, 1 token (1000 parts) left at t = 500: full 333.33 ms later.
        let state = TokenState::decode(&token_v1(2, 3, 1000, 500, 1000)).unwrap();
        assert_eq!(
            state,
            TokenState {
                full_at: 834,
                slack: 2
            }
        );
        // A full bucket, invalid parameters, or a wrong length are refused.
        for bad in [
            token_v1(2, 3, 1000, 500, 2000),
            token_v1(0, 3, 1000, 500, 0),
            token_v1(2, 3, 0, 500, 0),
            token_v1(2, 3, 1000, u64::MAX, 0),
            token_v1(2, 3, 1000, 500, 0)[..49].to_vec(),
        ] {
            assert_eq!(
                TokenState::decode(&bad),
                Err(DecodeError::Invalid),
                "{bad:?}"
            );
        }
        // Fixed and sliding windows read the same in both versions.
        let mut v1 = Encoded::of(&FixedState {
            window_end: 10,
            count: 1,
        })
        .as_bytes()
        .to_vec();
        v1[0] = 1;
        assert_eq!(
            FixedState::decode(&v1),
            Ok(FixedState {
                window_end: 10,
                count: 1
            })
        );
    }

    #[test]
    fn words_round_trip_within_their_bits() {
        let fixed = FixedState {
            window_end: (1 << 43) - 1,
            count: (1 << 20) - 1,
        };
        let word = fixed.to_word().unwrap();
        assert!(word < 1 << 63);
        assert_eq!(FixedState::from_word(word), Some(fixed));
        assert_eq!(
            FixedState {
                window_end: 1 << 43,
                count: 1
            }
            .to_word(),
            None
        );
        assert_eq!(
            FixedState {
                window_end: 1,
                count: 1 << 20
            }
            .to_word(),
            None
        );
        let token = TokenState {
            full_at: 1_800_000_000_000,
            slack: 7,
        };
        assert_eq!(TokenState::from_word(token.to_word().unwrap()), Some(token));
        assert_eq!(
            TokenState {
                full_at: 1,
                slack: 1 << 20
            }
            .to_word(),
            None
        );
        // Words that no state makes are refused.
        assert_eq!(FixedState::from_word(1 << 63), None);
        assert_eq!(FixedState::from_word(5), None, "count 0");
        assert_eq!(SlidingState::from_word(5), None);
    }
}
