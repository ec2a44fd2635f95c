//! The binary encoding of limiter records, shared by RDB files, replication and AOF rewrites.
//!
//! ```text
//! byte 0     encoding version (3)
//! byte 1     algorithm ([`Codec::TAG`]): b'F' fixed window, b'S' sliding window, b'T' token bucket
//! byte 2     what follows: bit 0 the end of a block, bit 1 a state (at least one of them)
//! then       blocked_until u64 (bit 0), and the state's fields (bit 1), little-endian, written
//!            and read by each algorithm's file:
//!   F        window_end u64, count u64                                      (16 bytes)
//!   S        window u64, first u64, n u8, counts u64 x n (1..=65)           (25..=537 bytes)
//!   T        full_at u64, slack u64                                         (16 bytes)
//! ```
//!
//! Versions 1 and 2 had no byte 2: a state and no block. Version 1 differs from 2 only in its
//! token buckets, which carried their parameters and a level (`capacity u64, rate u64,
//! period u64, updated_at u64, level u128`, 48 bytes), converted exactly. Both are still
//! read. Decoding checks every invariant a record built by the algorithms holds
//! (`is_valid`), so a blob from a damaged file or a hand-written command can never become a
//! limiter that misbehaves.
//!
//! [`Word`] is a second, in-memory encoding: a fixed window or token bucket with usual
//! figures and no block fits in 63 bits, which the storage layer keeps in place of a pointer.

use crate::record::{Record, View};
use crate::{State, Timestamp};

/// The version written in byte 0.
pub const ENCODING_VERSION: u8 = 3;

/// Versions this build reads.
const READABLE: std::ops::RangeInclusive<u8> = 1..=ENCODING_VERSION;

/// The longest encoding of any record: a blocked sliding window with all 65 buckets in use
/// (each algorithm's file asserts at compile time that its encodings fit).
pub const MAX_ENCODED_LEN: usize = 548;

/// The bytes before a state's fields at most: version, algorithm, flags and a block's end.
pub const HEADER_LEN: usize = 11;

/// Byte 2's bits.
const BLOCKED: u8 = 1;
const HAS_STATE: u8 = 2;

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

/// A state with a binary encoding, the fields of a record.
pub trait Codec: Sized {
    /// The algorithm byte.
    const TAG: u8;

    /// Appends the state's fields to `out`.
    fn encode(&self, out: &mut Encoded);

    /// Reads the fields `encode` wrote (in a `version` encoding), to the end; `None` if they
    /// do not make a valid state.
    fn decode_fields(version: u8, fields: &mut Fields) -> Option<Self>;
}

impl<S: Codec + State> Record<S> {
    /// Reads a record written by [`Encoded::of`] (this version or an earlier one) and checks
    /// it.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes {
            [version, ..] if !READABLE.contains(version) => Err(DecodeError::UnknownVersion),
            [version, tag, fields @ ..] if *tag == S::TAG => {
                Self::decode_fields(*version, &mut Fields(fields)).ok_or(DecodeError::Invalid)
            }
            [_, _, ..] => Err(DecodeError::OtherAlgorithm),
            [_] => Err(DecodeError::Invalid),
            [] => Err(DecodeError::UnknownVersion),
        }
    }

    fn decode_fields(version: u8, f: &mut Fields) -> Option<Self> {
        let record = if version < 3 {
            Record::of(S::decode_fields(version, f)?)
        } else {
            let [flags] = f.take()?;
            if flags & !(BLOCKED | HAS_STATE) != 0 {
                return None;
            }
            let blocked_until =
                Timestamp::from_millis(if flags & BLOCKED != 0 { f.u64()? } else { 0 });
            let state = if flags & HAS_STATE != 0 {
                Some(S::decode_fields(version, f)?)
            } else {
                f.end()?;
                None
            };
            // A block that is written is one that was set.
            if flags & BLOCKED != 0 && blocked_until == Timestamp::EPOCH {
                return None;
            }
            Record {
                state,
                blocked_until,
            }
        };
        record.is_valid().then_some(record)
    }
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

/// A record packs when its state does and it has no block.
impl<S: Word> Word for Record<S> {
    fn to_word(&self) -> Option<u64> {
        match self {
            Record {
                state: Some(state),
                blocked_until: Timestamp::EPOCH,
            } => state.to_word(),
            _ => None,
        }
    }

    fn from_word(word: u64) -> Option<Self> {
        S::from_word(word).map(Record::of)
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

    /// Encodes a record.
    pub fn of<S: Codec>(record: &Record<S>) -> Self {
        Self::of_view(record.view())
    }

    /// Encodes a record as read where it is stored.
    pub fn of_view<S: Codec>(record: View<'_, S>) -> Self {
        let mut out = Self::start(S::TAG);
        let blocked = record.blocked_until != Timestamp::EPOCH;
        let has_state = record.state.is_some();
        out.put(&[(u8::from(blocked) * BLOCKED) | (u8::from(has_state) * HAS_STATE)]);
        if blocked {
            out.put(&record.blocked_until.as_millis().to_le_bytes());
        }
        if let Some(state) = record.state {
            state.encode(&mut out);
        }
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
    use crate::scenario::{at, ms};
    use crate::sliding::MAX_BUCKETS;
    use crate::{FixedState, MAX_UNITS, Millis, SlidingState, TokenState};

    fn round_trip<S: Codec + State>(record: Record<S>) {
        let encoded = Encoded::of(&record);
        assert_eq!(Record::decode(encoded.as_bytes()), Ok(record));
        // Every strict prefix and any extra byte are refused.
        let bytes = encoded.as_bytes();
        for len in 0..bytes.len() {
            assert!(
                Record::<S>::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Record::<S>::decode(&longer).is_err());
    }

    fn fixed(window_end: u64, count: u64) -> Record<FixedState> {
        Record::of(FixedState {
            window_end: at(window_end),
            count,
        })
    }

    #[test]
    fn records_round_trip() {
        round_trip(fixed(1_700_000_060_000, 42));
        round_trip(Record::of(SlidingState {
            window: ms(60_000),
            first: 28_333_334,
            counts: vec![3, 0, 1].into(),
        }));
        round_trip(Record {
            state: Some(SlidingState {
                window: ms(6_400),
                first: 9,
                counts: vec![1; MAX_BUCKETS].into(),
            }),
            blocked_until: at(1_700_000_600_000),
        });
        round_trip(Record::of(TokenState {
            full_at: at(1_700_000_000_123),
            slack: 9,
        }));
        round_trip(Record::<TokenState> {
            state: None,
            blocked_until: at(1_700_000_600_000),
        });
    }

    #[test]
    fn layout_is_fixed() {
        let bytes = Encoded::of(&fixed(0x0102, 3));
        assert_eq!(
            bytes.as_bytes(),
            [3, b'F', 2, 2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0].as_slice()
        );
        let blocked = Record::<FixedState> {
            state: None,
            blocked_until: at(0x0203),
        };
        assert_eq!(
            Encoded::of(&blocked).as_bytes(),
            [3, b'F', 1, 3, 2, 0, 0, 0, 0, 0, 0].as_slice()
        );
        let max = Record {
            state: Some(SlidingState {
                window: ms(6_400),
                first: 9,
                counts: vec![1; MAX_BUCKETS].into(),
            }),
            blocked_until: at(1),
        };
        assert_eq!(Encoded::of(&max).as_bytes().len(), MAX_ENCODED_LEN);
    }

    #[test]
    fn refuses_other_versions_algorithms_and_invalid_records() {
        let bytes = Encoded::of(&fixed(10, 1));
        assert_eq!(
            Record::<TokenState>::decode(bytes.as_bytes()),
            Err(DecodeError::OtherAlgorithm)
        );
        let mut v4 = bytes.as_bytes().to_vec();
        v4[0] = 4;
        assert_eq!(
            Record::<FixedState>::decode(&v4),
            Err(DecodeError::UnknownVersion)
        );
        for bad in [
            &b""[..],
            b"\x03",
            b"\x03F",
            b"\x03F\x00",                                 // neither a block nor a state
            b"\x03F\x04",                                 // an unknown bit
            b"\x03F\x01\x00\x00\x00\x00\x00\x00\x00\x00", // a block ending at 0
            b"\x03F\x01\x00\x00\x00\x00\x00\x00\x00\x80", // beyond a signed expiry
        ] {
            assert!(Record::<FixedState>::decode(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Record::<FixedState>::decode(Encoded::of(&fixed(10, 0)).as_bytes()),
            Err(DecodeError::Invalid)
        );
        let never = Record::of(TokenState {
            full_at: at(0),
            slack: 1,
        });
        assert_eq!(
            Record::<TokenState>::decode(Encoded::of(&never).as_bytes()),
            Err(DecodeError::Invalid)
        );
        // A state that resets beyond a signed 64-bit expiry is refused like such a block:
        // its key could never expire as stored, and its replies would not fit (a token
        // bucket full in the year 584 million replied a negative reset_after_ms; found by
        // the `codec` fuzz target).
        let far = MAX_UNITS + 1;
        assert_eq!(
            Record::<TokenState>::decode(
                Encoded::of(&Record::of(TokenState {
                    full_at: at(far),
                    slack: 0
                }))
                .as_bytes()
            ),
            Err(DecodeError::Invalid)
        );
        assert_eq!(
            Record::<FixedState>::decode(Encoded::of(&fixed(far, 1)).as_bytes()),
            Err(DecodeError::Invalid)
        );
        let sliding = |window: u64| SlidingState {
            window: ms(window),
            first: (far - window) / crate::sliding::granularity(window),
            counts: vec![1].into(),
        };
        let late = Record::of(sliding(Millis::MAX.as_u64()));
        assert!(
            late.state.as_ref().is_some_and(State::is_valid) && late.reset_at() > at(MAX_UNITS)
        );
        assert_eq!(
            Record::<SlidingState>::decode(Encoded::of(&late).as_bytes()),
            Err(DecodeError::Invalid)
        );
        // At the bound itself, each is taken.
        let at_bound = Record::of(TokenState {
            full_at: at(MAX_UNITS),
            slack: 0,
        });
        assert_eq!(
            Record::decode(Encoded::of(&at_bound).as_bytes()),
            Ok(at_bound)
        );
        assert_eq!(
            Record::decode(Encoded::of(&fixed(MAX_UNITS, 1)).as_bytes()),
            Ok(fixed(MAX_UNITS, 1))
        );
        assert_eq!(tag_of(bytes.as_bytes()), Some(b'F'));
        assert_eq!(tag_of(&[2, b'F']), Some(b'F'));
        assert_eq!(tag_of(&[4, b'F']), None);
    }

    /// A version-2 fixed window: no flags byte.
    #[test]
    fn reads_version_2_records() {
        let v2 = [2, b'F', 2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(Record::decode(&v2), Ok(fixed(0x0102, 3)));
        let mut v2_token = vec![2, b'T'];
        v2_token.extend(1_700_000_000_123u64.to_le_bytes());
        v2_token.extend(9u64.to_le_bytes());
        assert_eq!(
            Record::decode(&v2_token),
            Ok(Record::of(TokenState {
                full_at: at(1_700_000_000_123),
                slack: 9
            }))
        );
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
        let record = Record::<TokenState>::decode(&token_v1(2, 3, 1000, 500, 1000)).unwrap();
        assert_eq!(
            record,
            Record::of(TokenState {
                full_at: at(834),
                slack: 2
            })
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
                Record::<TokenState>::decode(&bad),
                Err(DecodeError::Invalid),
                "{bad:?}"
            );
        }
        // Fixed windows read the same in versions 1 and 2.
        let v1 = [1, b'F', 10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(Record::decode(&v1), Ok(fixed(10, 1)));
    }

    #[test]
    fn words_round_trip_within_their_bits() {
        let max = fixed((1 << 43) - 1, (1 << 20) - 1);
        let word = max.to_word().unwrap();
        assert!(word < 1 << 63);
        assert_eq!(Record::from_word(word), Some(max));
        assert_eq!(fixed(1 << 43, 1).to_word(), None);
        assert_eq!(fixed(1, 1 << 20).to_word(), None);
        // A blocked record is never a word.
        let blocked = Record {
            blocked_until: at(5),
            ..fixed(1, 1)
        };
        assert_eq!(blocked.to_word(), None);
        let token = Record::of(TokenState {
            full_at: at(1_800_000_000_000),
            slack: 7,
        });
        assert_eq!(Record::from_word(token.to_word().unwrap()), Some(token));
        assert_eq!(
            Record::of(TokenState {
                full_at: at(1),
                slack: 1 << 20
            })
            .to_word(),
            None
        );
        // Words that no state makes are refused.
        assert_eq!(Record::<FixedState>::from_word(1 << 63), None);
        assert_eq!(Record::<FixedState>::from_word(5), None, "count 0");
        assert_eq!(Record::<SlidingState>::from_word(5), None);
    }
}
