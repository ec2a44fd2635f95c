//! How a limiter lives in a Redis key: the module data type each algorithm registers
//! ([`data_type`]), its value pointer ([`Value`]) and its persistence callbacks.
//!
//! A key holds a core `Record` (the algorithm's state and its block), its value pointer in one
//! of three ways ([`Value`]): a record that fits in 63 bits (a fixed window or a token bucket
//! with usual figures and no block, see `ratelimit_core::codec::Word`) is the pointer itself,
//! shifted left with the low bit set, as Redis keeps small integers in an object's pointer;
//! a key that is not blocked holds its bare state in a `Box` (an address with the two low
//! bits clear); a blocked one holds the whole record in a `Box`, its address tagged with the
//! second bit. So the block's room is paid only by keys that have one. Redis never reads a module value itself: it hands the pointer back to
//! these callbacks, and active defrag moves only its own wrapper unless the type registers a
//! `defrag` callback, which these do not.
//!
//! Every callback goes through the one binary encoding of `ratelimit_core::codec`: RDB saves
//! it as one string, AOF rewrites emit it as `RL.STATE <key> <encoding>` and `PERSIST <key>`
//! (Redis appends the expiry, if the key has one), `DEBUG DIGEST-VALUE` digests it. Loading decodes and validates, so a damaged file
//! or payload never yields a bad limiter. The RDB encoding version of each type is 1; the
//! blob carries its own version.

use std::ffi::{CStr, c_int, c_void};
use std::mem::size_of;
use std::ptr::NonNull;

use ratelimit_core::codec::{Codec, Encoded, Word};
use ratelimit_core::record::View;
use ratelimit_core::{Record, State, Timestamp};
use redis_module::native_types::RedisType;
use redis_module::raw;

use crate::api::api;
use crate::guard;

/// The RDB encoding version of every type.
const ENCODING_VERSION: c_int = 1;

/// A core state stored in a Redis key.
pub trait Stored: Codec + Word + State + 'static {
    /// The data type registered for this state.
    fn data_type() -> &'static RedisType;

    /// The keyspace event a change fires: the command's name, in lower case.
    const EVENT: &'static CStr;

    /// Whether a call updates a boxed state in place rather than storing a new one.
    const UPDATE_IN_PLACE: bool = false;

    /// Bytes the state owns on the heap beyond its own size.
    fn heap_size(&self) -> usize {
        0
    }

    fn redis_type() -> *mut raw::RedisModuleType {
        *Self::data_type().raw_type.borrow()
    }
}

/// A module value pointer, read: a key's record ([`Record`]: a state of type `S` and its
/// block) packed into the pointer, a boxed bare state (no block), or a boxed record.
pub enum Value<'a, S> {
    Packed(Record<S>),
    Bare(&'a mut S),
    Boxed(&'a mut Record<S>),
}

/// The tag of a pointer to a boxed record (a boxed bare state has none; a packed word has the
/// low bit). Boxes of records and states are aligned to 8 bytes: the low bits are free.
const RECORD_TAG: usize = 0b10;

const _: () = assert!(align_of::<usize>() >= 4, "two free bits in a box's address");

impl<'a, S: Stored> Value<'a, S> {
    /// Reads a pointer this type stored; `None` only for a packed word no state makes, which
    /// [`into_raw`](Self::into_raw) never writes.
    ///
    /// # Safety
    /// `ptr` came from `into_raw::<S>` and is still owned by the key (not freed).
    pub unsafe fn from_raw(ptr: NonNull<c_void>) -> Option<Self> {
        let addr = ptr.as_ptr().addr();
        if !Self::holds_box(ptr.as_ptr()) {
            return Record::from_word((addr >> 1) as u64).map(Value::Packed);
        }
        if addr & RECORD_TAG == 0 {
            // SAFETY: an untagged box of this type is a live `Box<S>`.
            return Some(Value::Bare(unsafe { ptr.cast::<S>().as_mut() }));
        }
        let record = ptr
            .as_ptr()
            .map_addr(|a| a & !RECORD_TAG)
            .cast::<Record<S>>();
        // SAFETY: a tagged box of this type is a live `Box<Record<S>>`.
        unsafe { record.as_mut() }.map(Value::Boxed)
    }

    /// The record, borrowed.
    pub fn view(&self) -> View<'_, S> {
        match self {
            Value::Packed(record) => record.view(),
            Value::Bare(state) => View::of(state),
            Value::Boxed(record) => record.view(),
        }
    }

    /// The pointer that holds `record`: the record itself if it packs, else a new `Box` of
    /// its bare state (no block) or of the record.
    pub fn into_raw(record: Record<S>) -> *mut c_void {
        match record.to_word().and_then(|word| usize::try_from(word).ok()) {
            // Below 2^63: the shift loses nothing on a 64-bit target.
            Some(word) if usize::BITS >= 64 => std::ptr::without_provenance_mut(word << 1 | 1),
            _ => match record {
                Record {
                    state: Some(state),
                    blocked_until: Timestamp::EPOCH,
                } => Box::into_raw(Box::new(state)).cast(),
                record => {
                    let ptr = Box::into_raw(Box::new(record)).cast::<c_void>();
                    ptr.map_addr(|a| a | RECORD_TAG)
                }
            },
        }
    }

    /// Stores `record` in the box `ptr` holds if it is of the same kind (a bare state for a
    /// record without a block, a record otherwise); else gives the record back.
    ///
    /// # Safety
    /// As for [`from_raw`](Self::from_raw).
    pub unsafe fn overwrite(ptr: NonNull<c_void>, record: Record<S>) -> Result<(), Record<S>> {
        // A packed value, or a record that packs, is replaced: decided before decoding
        // anything, so storing a packed state costs what it did.
        if !Self::holds_box(ptr.as_ptr()) || record.to_word().is_some() {
            return Err(record);
        }
        // SAFETY: forwarded to the caller.
        match (unsafe { Self::from_raw(ptr) }, record) {
            (
                Some(Value::Bare(old)),
                Record {
                    state: Some(state),
                    blocked_until: Timestamp::EPOCH,
                },
            ) => *old = state,
            (Some(Value::Boxed(old)), record) if record.blocked_until != Timestamp::EPOCH => {
                *old = record
            }
            (_, record) => return Err(record),
        }
        Ok(())
    }

    /// Whether a pointer `into_raw` made holds a `Box` (an even address) rather than a state.
    pub fn holds_box(ptr: *const c_void) -> bool {
        !ptr.is_null() && ptr.addr() & 1 == 0
    }

    /// Releases what `into_raw` made.
    ///
    /// # Safety
    /// `ptr` came from `into_raw::<S>` and is not used after.
    pub unsafe fn free(ptr: *mut c_void) {
        // SAFETY: forwarded to the caller; each box is dropped as the type it was made of.
        match NonNull::new(ptr).and_then(|p| unsafe { Self::from_raw(p) }) {
            Some(Value::Bare(state)) => drop(unsafe { Box::from_raw(state as *mut S) }),
            Some(Value::Boxed(record)) => drop(unsafe { Box::from_raw(record as *mut Record<S>) }),
            Some(Value::Packed(_)) | None => {}
        }
    }

    /// Bytes the value owns beyond Redis' own object: its box and what the state holds.
    fn heap_size(&self) -> usize {
        match self {
            Value::Packed(_) => 0,
            Value::Bare(state) => size_of::<S>() + state.heap_size(),
            Value::Boxed(record) => {
                size_of::<Record<S>>() + record.state.as_ref().map_or(0, S::heap_size)
            }
        }
    }

    /// Runs `f` on the value `ptr` holds; `fallback` if it holds none.
    ///
    /// # Safety
    /// As for [`from_raw`](Self::from_raw).
    unsafe fn with<R>(ptr: *const c_void, fallback: R, f: impl FnOnce(&Value<S>) -> R) -> R {
        // SAFETY: forwarded to the caller.
        match NonNull::new(ptr.cast_mut()).and_then(|p| unsafe { Self::from_raw(p) }) {
            Some(value) => f(&value),
            None => fallback,
        }
    }
}

/// The data type of states `S`, named `name` (exactly nine characters; `TYPE key` shows it).
pub const fn data_type<S: Stored>(name: &'static str) -> RedisType {
    RedisType::new(name, ENCODING_VERSION, methods::<S>())
}

const fn methods<S: Stored>() -> raw::RedisModuleTypeMethods {
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load::<S>),
        rdb_save: Some(rdb_save::<S>),
        aof_rewrite: Some(aof_rewrite::<S>),
        mem_usage: Some(mem_usage::<S>),
        digest: Some(digest::<S>),
        free: Some(free::<S>),
        aux_load: None,
        aux_save: None,
        aux_save_triggers: 0,
        free_effort: None,
        unlink: None,
        copy: Some(copy::<S>),
        defrag: None,
        mem_usage2: None,
        free_effort2: None,
        unlink2: None,
        copy2: None,
        aux_save2: None,
    }
}

/// Reads one encoded record; null (a load error for Redis) if it is not a valid one of `S`.
unsafe extern "C" fn rdb_load<S: Stored>(
    rdb: *mut raw::RedisModuleIO,
    encver: c_int,
) -> *mut c_void {
    guard::catch(|| {
        if encver != ENCODING_VERSION {
            return std::ptr::null_mut();
        }
        let mut len = 0;
        // SAFETY: Redis allocates the buffer (freed below) and reports IO errors, which the
        // module handles itself (REDISMODULE_OPTIONS_HANDLE_IO_ERRORS).
        unsafe {
            let buf = api!(RedisModule_LoadStringBuffer)(rdb, &mut len);
            if buf.is_null() || api!(RedisModule_IsIOError)(rdb) != 0 {
                return std::ptr::null_mut();
            }
            let record = Record::<S>::decode(std::slice::from_raw_parts(buf.cast::<u8>(), len));
            api!(RedisModule_Free)(buf.cast());
            match record {
                Ok(record) => Value::into_raw(record),
                Err(_) => std::ptr::null_mut(),
            }
        }
    })
    .unwrap_or(std::ptr::null_mut())
}

unsafe extern "C" fn rdb_save<S: Stored>(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    guard::catch(|| {
        // SAFETY: `value` is a value this type stored.
        let bytes = unsafe { Value::<S>::with(value, None, |v| Some(Encoded::of_view(v.view()))) };
        let bytes = bytes.as_ref().map_or(&[][..], Encoded::as_bytes);
        unsafe { api!(RedisModule_SaveStringBuffer)(rdb, bytes.as_ptr().cast(), bytes.len()) };
    });
}

unsafe extern "C" fn aof_rewrite<S: Stored>(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    guard::catch(|| {
        // SAFETY: `value` is a value this type stored; format "sb" takes a Redis string, a
        // pointer and a length.
        let Some(bytes) =
            (unsafe { Value::<S>::with(value, None, |v| Some(Encoded::of_view(v.view()))) })
        else {
            return;
        };
        let bytes = bytes.as_bytes();
        // `RL.STATE` on a new key sets its expiry to the reset moment, and Redis appends
        // `PEXPIREAT` only for a key that has an expiry: `PERSIST` first keeps a key whose
        // TTL was removed by hand without one.
        unsafe {
            api!(RedisModule_EmitAOF)(
                aof,
                c"RL.STATE".as_ptr(),
                c"sb".as_ptr(),
                key,
                bytes.as_ptr(),
                bytes.len(),
            );
            api!(RedisModule_EmitAOF)(aof, c"PERSIST".as_ptr(), c"s".as_ptr(), key);
        };
    });
}

unsafe extern "C" fn mem_usage<S: Stored>(value: *const c_void) -> usize {
    guard::catch(|| {
        // SAFETY: `value` is a value this type stored.
        unsafe { Value::<S>::with(value, 0, |v| v.heap_size()) }
    })
    .unwrap_or(0)
}

unsafe extern "C" fn digest<S: Stored>(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    guard::catch(|| {
        // SAFETY: `value` is a value this type stored.
        let bytes = unsafe { Value::<S>::with(value, None, |v| Some(Encoded::of_view(v.view()))) };
        let bytes = bytes.as_ref().map_or(&[][..], Encoded::as_bytes);
        unsafe {
            api!(RedisModule_DigestAddStringBuffer)(md, bytes.as_ptr().cast(), bytes.len());
            api!(RedisModule_DigestEndSequence)(md);
        }
    });
}

unsafe extern "C" fn free<S: Stored>(value: *mut c_void) {
    guard::catch(|| {
        // SAFETY: `value` is a value this type stored, which Redis hands back exactly once.
        unsafe { Value::<S>::free(value) };
    });
}

unsafe extern "C" fn copy<S: Stored>(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    guard::catch(|| {
        // SAFETY: `value` is a value this type stored.
        unsafe {
            Value::<S>::with(value, std::ptr::null_mut(), |v| {
                Value::into_raw(v.view().to_record())
            })
        }
    })
    .unwrap_or(std::ptr::null_mut())
}
