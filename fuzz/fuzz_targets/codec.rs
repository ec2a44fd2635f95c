//! Fuzz target `codec`: `ratelimit_core::Record::<S>::decode` of arbitrary bytes, for each
//! state type (fixed window, sliding window, token bucket), and a decision on what decodes.
//!
//! Input: the bytes to decode, then a tail of [`TAIL`] bytes describing a call (limiter
//! figures, time, cost or refund, block). What decodes is valid, encodes canonically (a
//! current-version blob re-encodes to the same bytes, an older one to a blob that decodes to
//! the same record), packs into a word and back if it packs; a call decided on it (by value
//! and in place) agrees, replies figures that fit the reply, and stores only records that
//! are valid and decode again: what a call stores is saved to RDB and must load.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimit_core::codec::{Codec, ENCODING_VERSION, Encoded, Word};
use ratelimit_core::{
    Call, Decision, FixedWindow, Limiter, MAX_UNITS, Millis, Op, Record, Retry, SlidingWindow,
    State, Timestamp, TokenBucket, Write, record,
};

/// Bytes of the call description at the end of the input.
///
/// ```text
/// 0       flags: 0x06 how the amount reads, 0x08 refund, 0x30 block, 0x40 the time's anchor
/// 1..9    limit or capacity     9..17  window or period     17..25  rate
/// 25..33  time                  33..37 amount               37      block
/// ```
const TAIL: usize = 38;

/// The latest time the calls use: a record's reset time must fit a signed 64-bit expiry
/// (`Record::is_valid`), and a call may store one up to two of the longest durations
/// later (a window's end and a block's).
const MAX_NOW: u64 = MAX_UNITS - 2 * MAX_MS;

/// The longest duration, in ms.
const MAX_MS: u64 = Millis::MAX.as_u64();

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn ms(ms: u64) -> Millis {
    Millis::from_millis(ms)
}

fuzz_target!(
    init: write_seeds(),
    |data: &[u8]| {
    let (blob, tail) = data.split_at(data.len().saturating_sub(TAIL));
    let mut tail_bytes = [0u8; TAIL];
    tail_bytes[..tail.len()].copy_from_slice(tail);
    let call = CallBytes(tail_bytes);
    check::<FixedWindow>(blob, &call, |c| FixedWindow::new(c.units(1), c.duration(9)));
    check::<SlidingWindow>(blob, &call, |c| {
        SlidingWindow::new(c.units(1), c.duration(9))
    });
    check::<TokenBucket>(blob, &call, |c| {
        TokenBucket::new(c.units(1), c.units(17), c.duration(9))
    });
});

/// With `RL_FUZZ_SEED_DIR` set, writes seeds there: records the algorithms stored (a
/// window, a sliding window with every bucket in use, a bucket, blocked ones), in the
/// current encoding, each followed by a tail.
fn write_seeds() {
    let Some(dir) = std::env::var_os("RL_FUZZ_SEED_DIR") else {
        return;
    };
    const START: u64 = 1_700_000_000_000;
    fn stored<L: Limiter>(limiter: &L, calls: &[(u64, Call)]) -> Vec<u8>
    where
        L::State: Codec,
    {
        let mut record = None;
        for &(now, call) in calls {
            match record::decide(limiter, record.as_ref(), at(now), call).write {
                Write::Keep => {}
                Write::Store(new) => record = Some(new),
                Write::Delete => record = None,
            }
        }
        Encoded::of(&record.expect("a stored record"))
            .as_bytes()
            .to_vec()
    }
    let blocking = Call {
        op: Op::Take(5),
        block: ms(600_000),
    };
    let fixed = FixedWindow::new(10, ms(60_000)).unwrap();
    let sliding = SlidingWindow::new(1_000, ms(6_400)).unwrap();
    let token = TokenBucket::new(10, 1, ms(1_000)).unwrap();
    let buckets: Vec<(u64, Call)> = (0..65).map(|i| (START + 100 * i, Call::take(1))).collect();
    let blobs = [
        stored(&fixed, &[(START, Call::take(3))]),
        stored(&fixed, &[(START, Call::take(8)), (START + 1, blocking)]),
        stored(&sliding, &buckets),
        stored(&sliding, &[(START, Call::take(999)), (START + 1, blocking)]),
        stored(&token, &[(START, Call::take(4))]),
        stored(&token, &[(START, Call::take(11)), (START, blocking)]),
    ];
    // Tails: all zeros (limits of 1, durations of 1 ms, the time near the record's reset),
    // and a call of 2 units blocking 1 ms at the time of the block's end, with a limit of
    // 10, a window of 60 s and a rate of 10.
    let mut tail = [0u8; TAIL];
    tail[0] = 0x40 | 0x10;
    tail[1..9].copy_from_slice(&(9u64 << 1).to_le_bytes());
    tail[9..17].copy_from_slice(&(59_999u64 << 1).to_le_bytes());
    tail[17..25].copy_from_slice(&(9u64 << 1).to_le_bytes());
    tail[25..33].copy_from_slice(&(100_000u64 << 2 | 1).to_le_bytes());
    tail[33] = 2;
    std::fs::create_dir_all(&dir).expect("the seed directory");
    for (i, blob) in blobs.iter().enumerate() {
        for (j, tail) in [[0u8; TAIL], tail].iter().enumerate() {
            let seed = [&blob[..], tail].concat();
            let path = std::path::Path::new(&dir).join(format!("seed-{i}-{j}"));
            std::fs::write(path, seed).expect("a seed");
        }
    }
}

/// The tail, read as a call.
struct CallBytes([u8; TAIL]);

impl CallBytes {
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.0[at..at + 8].try_into().unwrap())
    }

    /// A count of units: small (the usual case) or anywhere up to `MAX_UNITS`, by the low
    /// bit of the byte at `at`.
    fn units(&self, at: usize) -> u64 {
        let raw = self.u64_at(at) >> 1;
        if self.0[at] & 1 == 0 {
            raw % 1_000 + 1
        } else {
            raw % MAX_UNITS + 1
        }
    }

    /// A duration: 1 ms to `Millis::MAX`, short ones more often.
    fn duration(&self, at: usize) -> Millis {
        let raw = self.u64_at(at) >> 1;
        ms(if self.0[at] & 1 == 0 {
            raw % 100_000 + 1
        } else {
            raw % MAX_MS + 1
        })
    }

    /// The call's time: near a moment of the record (its reset or block end, by up to a
    /// window or so either way) or anywhere a server clock can be.
    fn now(&self, record_at: Timestamp) -> Timestamp {
        let raw = self.u64_at(25);
        let delta = (raw >> 2) as i64 % 200_000 - 100_000;
        at(match raw & 3 {
            0 => raw >> 2,
            _ => record_at.as_millis().saturating_add_signed(delta),
        }
        .min(MAX_NOW))
    }

    fn call(&self) -> Call {
        let flags = self.0[0];
        let amount = u64::from(self.0[33]) | u64::from(self.0[34]) << 8;
        let amount = match flags & 0x06 {
            0 => amount % 4,
            2 => amount,
            4 => MAX_UNITS - amount,
            _ => u64::from(u32::from_le_bytes(self.0[33..37].try_into().unwrap())),
        };
        let op = if flags & 0x08 != 0 {
            Op::Refund(amount)
        } else {
            Op::Take(amount)
        };
        let block = ms(match flags & 0x30 {
            0x00 => 0,
            0x10 => u64::from(self.0[37]) + 1,
            0x20 => u64::from(self.0[37]) * 60_000 + 1,
            _ => MAX_MS - u64::from(self.0[37]),
        });
        Call { op, block }
    }
}

fn check<L: Limiter>(blob: &[u8], call: &CallBytes, limiter: fn(&CallBytes) -> Option<L>)
where
    L::State: Codec + Word,
{
    let Ok(record) = Record::<L::State>::decode(blob) else {
        return;
    };
    // (`decode` ends with `is_valid`: what decodes is valid by construction, so nothing here
    // asserts it again; what it re-encodes to must decode to the same record.)
    assert_round_trip(&record);
    // The encoding is canonical: a blob of this version is the encoding of what it decodes to.
    if blob[0] == ENCODING_VERSION {
        assert_eq!(Encoded::of(&record).as_bytes(), blob, "{record:?}");
    }
    let Some(limiter) = limiter(call) else {
        return;
    };
    let anchor = if call.0[0] & 0x40 != 0 {
        record.blocked_until
    } else {
        record.reset_at()
    };
    let now = call.now(anchor);
    let call = call.call();
    let stored = decide(&limiter, &record, now, call);
    // And the next call, on what this one left.
    if let Some(next) = stored {
        decide(
            &limiter,
            &next,
            at((now.as_millis() + 1).min(MAX_NOW)),
            Call::take(1),
        );
    }
}

/// One call on a record, by value and in place: the same decision and the same record, and
/// what is stored valid. Returns the record the key holds after it.
fn decide<L: Limiter>(
    limiter: &L,
    stored: &Record<L::State>,
    now: Timestamp,
    call: Call,
) -> Option<Record<L::State>>
where
    L::State: Codec + Word,
{
    let out = record::decide(limiter, Some(stored), now, call);
    let mut in_place = stored.clone();
    let placed = record::decide_in_place(limiter, &mut in_place, now, call);
    assert_eq!(
        placed.decision, out.decision,
        "in place, at {now:?}, {call:?}"
    );
    check_decision(&out.decision, now, call);
    match out.write {
        Write::Keep => {
            assert_eq!(placed.write, Write::Keep);
            assert_eq!(&in_place, stored);
            Some(in_place)
        }
        Write::Delete => {
            assert_eq!(placed.write, Write::Delete);
            None
        }
        Write::Store(new) => {
            assert_eq!(placed.write, Write::Store(()));
            assert_eq!(in_place, new, "in place, at {now:?}, {call:?}");
            assert!(
                new.is_valid(),
                "stored an invalid {new:?} at {now:?}, {call:?}"
            );
            assert_round_trip(&new);
            Some(new)
        }
    }
}

/// A decision's figures are what the reply can carry and say.
fn check_decision(d: &Decision, now: Timestamp, call: Call) {
    let context = format!("{d:?} at {now:?}, {call:?}");
    assert!(d.limit >= 1 && d.limit <= MAX_UNITS, "{context}");
    assert!(d.remaining <= d.limit, "{context}");
    assert!(i64::try_from(d.reset_after.as_u64()).is_ok(), "{context}");
    match d.retry {
        Retry::Now => assert!(d.allowed, "{context}"),
        Retry::After(after) => assert!(
            !d.allowed && !after.is_zero() && i64::try_from(after.as_u64()).is_ok(),
            "{context}"
        ),
        Retry::Never => assert!(!d.allowed, "{context}"),
    }
    if let Op::Refund(_) = call.op {
        assert!(d.allowed || d.remaining == 0, "{context}");
    }
}

/// A record encodes to a blob that decodes to it, and a packed word unpacks to it.
fn assert_round_trip<S: Codec + State + Word>(record: &Record<S>) {
    let encoded = Encoded::of(record);
    assert_eq!(
        Record::<S>::decode(encoded.as_bytes()).as_ref(),
        Ok(record),
        "{:?}",
        encoded.as_bytes()
    );
    if let Some(word) = record.to_word() {
        assert!(word < 1 << 63, "{record:?} packs to {word:#x}");
        assert_eq!(Record::<S>::from_word(word).as_ref(), Some(record));
    }
}
