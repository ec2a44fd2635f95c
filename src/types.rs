//! The three module data types, one per algorithm, and their persistence callbacks.
//!
//! A key holds a `Box` of a core state. Every callback goes through the one binary encoding
//! of `ratelimit_core::codec`: RDB saves it as one string, AOF rewrites emit it as
//! `RL.STATE <key> <encoding>` (Redis appends the expiry), `DEBUG DIGEST-VALUE` digests it.
//! Loading decodes and validates, so a damaged file or payload never yields a bad limiter.
//! The RDB encoding version of each type is 1; a later one would be matched in `rdb_load`.

use std::ffi::{c_int, c_void};
use std::mem::size_of;

use ratelimit_core::codec::{Codec, Encoded};
use ratelimit_core::{FixedState, SlidingState, State, TokenState};
use redis_module::native_types::RedisType;
use redis_module::raw;

use crate::guard;
use crate::redis::api;

/// The RDB encoding version of every type.
const ENCODING_VERSION: c_int = 1;

/// A core state stored in a Redis key.
pub trait Stored: Codec + State + 'static {
    /// The data type registered for this state.
    fn data_type() -> &'static RedisType;

    /// Bytes the state owns on the heap beyond its own size.
    fn heap_size(&self) -> usize {
        0
    }

    fn redis_type() -> *mut raw::RedisModuleType {
        *Self::data_type().raw_type.borrow()
    }
}

impl Stored for FixedState {
    fn data_type() -> &'static RedisType {
        &FIXED_TYPE
    }
}

impl Stored for SlidingState {
    fn data_type() -> &'static RedisType {
        &SLIDING_TYPE
    }

    fn heap_size(&self) -> usize {
        if self.counts.spilled() {
            self.counts.capacity() * size_of::<u64>()
        } else {
            0
        }
    }
}

impl Stored for TokenState {
    fn data_type() -> &'static RedisType {
        &TOKEN_TYPE
    }
}

/// Type names are exactly nine characters; `TYPE key` shows them.
pub static FIXED_TYPE: RedisType =
    RedisType::new("ratelimFW", ENCODING_VERSION, methods::<FixedState>());
pub static SLIDING_TYPE: RedisType =
    RedisType::new("ratelimSW", ENCODING_VERSION, methods::<SlidingState>());
pub static TOKEN_TYPE: RedisType =
    RedisType::new("ratelimTB", ENCODING_VERSION, methods::<TokenState>());

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

/// Reads one encoded state; null (a load error for Redis) if it is not a valid `S`.
unsafe extern "C" fn rdb_load<S: Stored>(
    rdb: *mut raw::RedisModuleIO,
    encver: c_int,
) -> *mut c_void {
    guard::callback(std::ptr::null_mut(), || {
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
            let state = S::decode(std::slice::from_raw_parts(buf.cast::<u8>(), len));
            api!(RedisModule_Free)(buf.cast());
            match state {
                Ok(state) => Box::into_raw(Box::new(state)).cast(),
                Err(_) => std::ptr::null_mut(),
            }
        }
    })
}

unsafe extern "C" fn rdb_save<S: Stored>(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    guard::callback((), || {
        // SAFETY: `value` is a `Box<S>` this type stored.
        let bytes = Encoded::of(unsafe { &*value.cast::<S>() });
        let bytes = bytes.as_bytes();
        unsafe { api!(RedisModule_SaveStringBuffer)(rdb, bytes.as_ptr().cast(), bytes.len()) };
    })
}

unsafe extern "C" fn aof_rewrite<S: Stored>(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    guard::callback((), || {
        // SAFETY: `value` is a `Box<S>`; format "sb" takes a Redis string, a pointer, a length.
        let bytes = Encoded::of(unsafe { &*value.cast::<S>() });
        let bytes = bytes.as_bytes();
        unsafe {
            api!(RedisModule_EmitAOF)(
                aof,
                c"RL.STATE".as_ptr(),
                c"sb".as_ptr(),
                key,
                bytes.as_ptr(),
                bytes.len(),
            )
        };
    })
}

unsafe extern "C" fn mem_usage<S: Stored>(value: *const c_void) -> usize {
    guard::callback(0, || {
        // SAFETY: `value` is a `Box<S>`.
        size_of::<S>() + unsafe { &*value.cast::<S>() }.heap_size()
    })
}

unsafe extern "C" fn digest<S: Stored>(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    guard::callback((), || {
        // SAFETY: `value` is a `Box<S>`.
        let bytes = Encoded::of(unsafe { &*value.cast::<S>() });
        let bytes = bytes.as_bytes();
        unsafe {
            api!(RedisModule_DigestAddStringBuffer)(md, bytes.as_ptr().cast(), bytes.len());
            api!(RedisModule_DigestEndSequence)(md);
        }
    })
}

unsafe extern "C" fn free<S: Stored>(value: *mut c_void) {
    guard::callback((), || {
        // SAFETY: `value` is a `Box<S>` Redis hands back exactly once.
        drop(unsafe { Box::from_raw(value.cast::<S>()) });
    })
}

unsafe extern "C" fn copy<S: Stored>(
    _from: *mut raw::RedisModuleString,
    _to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    guard::callback(std::ptr::null_mut(), || {
        // SAFETY: `value` is a `Box<S>`.
        let state = unsafe { &*value.cast::<S>() }.clone();
        Box::into_raw(Box::new(state)).cast()
    })
}
