//! The binary encoding of limiter states, shared by RDB files, replication and AOF rewrites.
//!
//! ```text
//! byte 0     encoding version (1)
//! byte 1     algorithm: b'F' fixed window, b'S' sliding window, b'T' token bucket
//! then       little-endian fields
//!   F        window_end u64, count u64                                      (18 bytes)
//!   S        window u64, first u64, n u8, counts u64 x n (1..=65)           (27..=539 bytes)
//!   T        capacity u64, rate u64, period u64, updated_at u64, level u128 (50 bytes)
//! ```
//!
//! Decoding checks every invariant a state built by the algorithms holds (`is_valid`), so a
//! blob from a damaged file or a hand-written command can never become a limiter that
//! misbehaves. A future version 2 would add a branch in `decode`; version 1 stays readable.

use crate::{FixedState, SlidingState, State, TokenState, sliding::MAX_BUCKETS};

/// The version written in byte 0.
pub const ENCODING_VERSION: u8 = 1;

/// The longest encoding: a sliding window with every bucket in use.
pub const MAX_ENCODED_LEN: usize = 2 + 17 + 8 * MAX_BUCKETS;

/// Why a blob is not a state of the expected kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Empty, or a version this build does not know.
    UnknownVersion,
    /// A state of another algorithm.
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

    /// Reads a state written by `encode` and checks it.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes {
            [ENCODING_VERSION, tag, fields @ ..] if *tag == Self::TAG => {
                Self::decode_fields(&mut Fields(fields)).ok_or(DecodeError::Invalid)
            }
            [ENCODING_VERSION, b'F' | b'S' | b'T', ..] => Err(DecodeError::OtherAlgorithm),
            [ENCODING_VERSION] => Err(DecodeError::Invalid),
            _ => Err(DecodeError::UnknownVersion),
        }
    }

    /// Reads the fields after the two header bytes; `None` if they do not make a valid state.
    fn decode_fields(fields: &mut Fields) -> Option<Self>;
}

/// The algorithm byte of an encoded state, if the version is known.
pub fn tag_of(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [ENCODING_VERSION, tag, ..] => Some(*tag),
        _ => None,
    }
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

    fn put(&mut self, bytes: &[u8]) {
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
pub struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    fn u128(&mut self) -> Option<u128> {
        self.take().map(u128::from_le_bytes)
    }

    /// `Some(())` if every byte was read.
    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

impl Codec for FixedState {
    const TAG: u8 = b'F';

    fn encode(&self, out: &mut Encoded) {
        out.put(&self.window_end.to_le_bytes());
        out.put(&self.count.to_le_bytes());
    }

    fn decode_fields(f: &mut Fields) -> Option<Self> {
        let state = FixedState {
            window_end: f.u64()?,
            count: f.u64()?,
        };
        f.end()?;
        state.is_valid().then_some(state)
    }
}

impl Codec for SlidingState {
    const TAG: u8 = b'S';

    fn encode(&self, out: &mut Encoded) {
        out.put(&self.window.to_le_bytes());
        out.put(&self.first.to_le_bytes());
        // At most MAX_BUCKETS (65) counts in a valid state: the count fits a byte.
        out.put(&[self.counts.len() as u8]);
        for count in &self.counts {
            out.put(&count.to_le_bytes());
        }
    }

    fn decode_fields(f: &mut Fields) -> Option<Self> {
        let (window, first, [n]) = (f.u64()?, f.u64()?, f.take::<1>()?);
        if f.0.len() != 8 * usize::from(n) {
            return None;
        }
        let counts =
            f.0.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        let state = SlidingState {
            window,
            first,
            counts: counts.collect(),
        };
        state.is_valid().then_some(state)
    }
}

impl Codec for TokenState {
    const TAG: u8 = b'T';

    fn encode(&self, out: &mut Encoded) {
        for field in [self.capacity, self.rate, self.period, self.updated_at] {
            out.put(&field.to_le_bytes());
        }
        out.put(&self.level.to_le_bytes());
    }

    fn decode_fields(f: &mut Fields) -> Option<Self> {
        let state = TokenState {
            capacity: f.u64()?,
            rate: f.u64()?,
            period: f.u64()?,
            updated_at: f.u64()?,
            level: f.u128()?,
        };
        f.end()?;
        state.is_valid().then_some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            capacity: 100,
            rate: 10,
            period: 1000,
            updated_at: 1_700_000_000_123,
            level: 99_999,
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
            [1, b'F', 2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0].as_slice()
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
        let mut v2 = fixed.as_bytes().to_vec();
        v2[0] = 2;
        assert_eq!(FixedState::decode(&v2), Err(DecodeError::UnknownVersion));
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
        let full = TokenState {
            capacity: 1,
            rate: 1,
            period: 1,
            updated_at: 0,
            level: 1,
        };
        assert_eq!(
            TokenState::decode(Encoded::of(&full).as_bytes()),
            Err(DecodeError::Invalid)
        );
        assert_eq!(tag_of(fixed.as_bytes()), Some(b'F'));
    }
}
