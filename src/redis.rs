//! The thin layer over the Redis module API that the commands and types use: keys opened
//! once, typed values, absolute expiry, replies, effect replication and context flags.
//!
//! Everything goes through the raw function pointers that Redis fills in at load time; the
//! module refuses to load if one is missing (`api::missing_api`), so `api!` never fails after.

use std::ffi::{CStr, c_int, c_void};
use std::ptr::NonNull;

use ratelimit_core::codec::Encoded;
use ratelimit_core::{Millis, Record, State, Timestamp};
use redis_module::raw;

use crate::api::api;
use crate::error::Error;
use crate::propagation;
use crate::storage::{Stored, Value};

/// A command's context.
#[derive(Clone, Copy)]
pub struct Ctx(pub *mut raw::RedisModuleCtx);

/// A command argument (a Redis string owned by Redis for the command's duration).
pub type RString = *mut raw::RedisModuleString;

/// The bytes of a Redis string.
pub fn bytes<'a>(s: RString) -> &'a [u8] {
    let mut len = 0;
    // SAFETY: Redis returns a pointer to `len` bytes that live as long as the string.
    unsafe {
        let ptr = api!(RedisModule_StringPtrLen)(s, &mut len);
        if ptr.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(ptr.cast(), len)
        }
    }
}

/// Command arguments as byte strings.
pub struct Args<'a>(pub std::slice::Iter<'a, RString>);

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        self.0.next().map(|s| bytes(*s))
    }
}

/// The callbacks of a client a command blocks ([`Ctx::block_client`]).
pub struct Blocking {
    /// Answers the client once it is unblocked, with the data it was unblocked with.
    pub reply: raw::RedisModuleCmdFunc,
    /// Answers the client when its timeout passes.
    pub timeout: raw::RedisModuleCmdFunc,
    /// Frees the data a client was unblocked with, after `reply`.
    pub free: Option<unsafe extern "C" fn(*mut raw::RedisModuleCtx, *mut c_void)>,
    /// Called when the client disconnects while blocked.
    pub disconnect: raw::RedisModuleDisconnectFunc,
}

/// A client a command blocked, to be answered later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockedClient(NonNull<raw::RedisModuleBlockedClient>);

impl BlockedClient {
    /// The handle Redis gives a disconnect callback.
    pub fn from_raw(client: *mut raw::RedisModuleBlockedClient) -> Option<Self> {
        NonNull::new(client).map(BlockedClient)
    }

    /// Unblocks the client, to be answered by its reply callback with `data` (none: it is
    /// gone or has been answered). Once per client: the handle is released.
    pub fn unblock<T>(self, data: Option<Box<T>>) {
        let data = data.map_or(std::ptr::null_mut(), |d| Box::into_raw(d).cast());
        // SAFETY: a handle of a blocked client, unblocked once; the blocking's `free`
        // callback frees the data.
        unsafe { api!(RedisModule_UnblockClient)(self.0.as_ptr(), data) };
    }
}

/// A module timer ([`Ctx::start_timer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer(raw::RedisModuleTimerID);

impl Ctx {
    /// Blocks the calling client for at most `timeout`; `None` if Redis refuses.
    pub fn block_client(self, callbacks: &Blocking, timeout: Millis) -> Option<BlockedClient> {
        let timeout = i64::try_from(timeout.as_u64()).unwrap_or(i64::MAX);
        // SAFETY: a command's context; the callbacks are plain functions that outlive the
        // client.
        let client = unsafe {
            api!(RedisModule_BlockClient)(
                self.0,
                callbacks.reply,
                callbacks.timeout,
                callbacks.free,
                timeout,
            )
        };
        let client = BlockedClient::from_raw(client)?;
        // SAFETY: the handle just returned, still blocked.
        unsafe { api!(RedisModule_SetDisconnectCallback)(client.0.as_ptr(), callbacks.disconnect) };
        Some(client)
    }

    /// The client a timeout callback answers.
    pub fn blocked_client(self) -> Option<BlockedClient> {
        // SAFETY: a timeout callback's context.
        BlockedClient::from_raw(unsafe { api!(RedisModule_GetBlockedClientHandle)(self.0) })
    }

    /// The data a reply callback's client was unblocked with (null if none); it stays owned
    /// by the blocking's `free` callback.
    pub fn blocked_data<T>(self) -> *mut T {
        // SAFETY: a reply callback's context.
        unsafe { api!(RedisModule_GetBlockedClientPrivateData)(self.0) }.cast()
    }

    /// Calls `callback` with `data` after `after`, on the main thread.
    pub fn start_timer(
        self,
        after: Millis,
        callback: raw::RedisModuleTimerProc,
        data: u64,
    ) -> Timer {
        let after = i64::try_from(after.as_u64()).unwrap_or(i64::MAX);
        // SAFETY: a valid context; the data is a number, not a pointer.
        Timer(unsafe {
            api!(RedisModule_CreateTimer)(self.0, after, callback, data as usize as *mut c_void)
        })
    }

    /// Stops a timer; one that fired already is refused harmlessly.
    pub fn stop_timer(self, timer: Timer) {
        // SAFETY: a valid context.
        unsafe { api!(RedisModule_StopTimer)(self.0, timer.0, std::ptr::null_mut()) };
    }

    /// The server clock, read once per command.
    pub fn now(self) -> Timestamp {
        // SAFETY: no arguments; returns the server's cached wall clock.
        let ms = unsafe { api!(RedisModule_Milliseconds)() };
        Timestamp::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// Whether Redis calls the command only to learn where its keys are (`getkeys-api`).
    pub fn is_keys_position_request(self) -> bool {
        // SAFETY: a valid context.
        unsafe { api!(RedisModule_IsKeysPositionRequest)(self.0) != 0 }
    }

    /// Answers a keys position request: argument `pos` is a key.
    pub fn key_at(self, pos: usize) {
        // SAFETY: a valid context in a keys position request.
        unsafe { api!(RedisModule_KeyAtPos)(self.0, pos as c_int) };
    }

    fn flags(self) -> u32 {
        // SAFETY: a valid context.
        unsafe { api!(RedisModule_GetContextFlags)(self.0) as u32 }
    }

    /// Whether this command comes from the master link or an AOF being loaded.
    pub fn is_replicated_or_loading(self) -> bool {
        self.flags() & (raw::REDISMODULE_CTX_FLAGS_REPLICATED | raw::REDISMODULE_CTX_FLAGS_LOADING)
            != 0
    }

    /// Whether the client may be blocked: not inside `MULTI`, a script or another module's
    /// call (Redis refuses to block there and replies an error instead).
    pub fn may_block(self) -> bool {
        let deny = raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING
            | raw::REDISMODULE_CTX_FLAGS_MULTI
            | raw::REDISMODULE_CTX_FLAGS_LUA
            | raw::REDISMODULE_CTX_FLAGS_REPLICATED
            | raw::REDISMODULE_CTX_FLAGS_LOADING;
        self.flags() & deny == 0
    }

    /// Whether this server is a replica now (a timer must not write then).
    pub fn is_replica(self) -> bool {
        self.flags() & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0
    }

    /// The database the context's client has selected.
    pub fn selected_db(self) -> c_int {
        // SAFETY: a valid context.
        unsafe { api!(RedisModule_GetSelectedDb)(self.0) }
    }

    /// Selects a database for the keys this context opens next (a timer's own context).
    pub fn select_db(self, db: c_int) {
        // SAFETY: a valid context; an out-of-range id is refused and changes nothing.
        unsafe { api!(RedisModule_SelectDb)(self.0, db) };
    }

    /// Replies with the five figures of a decision: an array (RESP2) or a map (RESP3).
    pub fn reply_decision(self, figures: [(&'static CStr, i64); 5]) {
        // SAFETY: a valid context; names are static NUL-terminated strings.
        unsafe {
            if self.flags() & raw::REDISMODULE_CTX_FLAGS_RESP3 != 0 {
                api!(RedisModule_ReplyWithMap)(self.0, 5);
                for (name, value) in figures {
                    let name = name.to_bytes();
                    api!(RedisModule_ReplyWithStringBuffer)(
                        self.0,
                        name.as_ptr().cast(),
                        name.len(),
                    );
                    api!(RedisModule_ReplyWithLongLong)(self.0, value);
                }
            } else {
                api!(RedisModule_ReplyWithArray)(self.0, 5);
                for (_, value) in figures {
                    api!(RedisModule_ReplyWithLongLong)(self.0, value);
                }
            }
        }
    }

    /// Replies with several decisions under a verdict: `[allowed, retry_after_ms, d1, …, dN]`
    /// in RESP2, a map of `allowed`, `retry_after_ms` and `limits` (`[d1, …, dN]`) in RESP3.
    /// `each(i)` replies the `i`th decision.
    pub fn reply_verdict(
        self,
        allowed: i64,
        retry: i64,
        count: usize,
        mut each: impl FnMut(usize),
    ) {
        let name = |name: &'static CStr| {
            let name = name.to_bytes();
            // SAFETY: a valid context and a static buffer.
            unsafe {
                api!(RedisModule_ReplyWithStringBuffer)(self.0, name.as_ptr().cast(), name.len())
            };
        };
        // SAFETY: a valid context; every aggregate gets exactly the elements it announces.
        unsafe {
            if self.flags() & raw::REDISMODULE_CTX_FLAGS_RESP3 != 0 {
                api!(RedisModule_ReplyWithMap)(self.0, 3);
                name(c"allowed");
                api!(RedisModule_ReplyWithLongLong)(self.0, allowed);
                name(c"retry_after_ms");
                api!(RedisModule_ReplyWithLongLong)(self.0, retry);
                name(c"limits");
                api!(RedisModule_ReplyWithArray)(self.0, count as _);
            } else {
                api!(RedisModule_ReplyWithArray)(self.0, 2 + count as std::ffi::c_long);
                api!(RedisModule_ReplyWithLongLong)(self.0, allowed);
                api!(RedisModule_ReplyWithLongLong)(self.0, retry);
            }
        }
        for i in 0..count {
            each(i);
        }
    }

    /// Replies with an array of integers, in RESP2 and RESP3 alike.
    pub fn reply_integers(self, values: &[i64]) {
        // SAFETY: a valid context.
        unsafe {
            api!(RedisModule_ReplyWithArray)(self.0, values.len() as _);
            for &value in values {
                api!(RedisModule_ReplyWithLongLong)(self.0, value);
            }
        }
    }

    pub fn reply_integer(self, value: i64) {
        // SAFETY: a valid context.
        unsafe { api!(RedisModule_ReplyWithLongLong)(self.0, value) };
    }

    pub fn reply_ok(self) {
        // SAFETY: a valid context and a static string.
        unsafe { api!(RedisModule_ReplyWithSimpleString)(self.0, c"OK".as_ptr()) };
    }

    pub fn reply_error(self, error: Error) {
        let message = error.message();
        // SAFETY: a valid context and a NUL-terminated string, which Redis copies.
        unsafe { api!(RedisModule_ReplyWithError)(self.0, message.as_ptr()) };
    }

    /// Fires a keyspace notification: `event` on `key`, of a module-type key (`d` in
    /// `notify-keyspace-events`) or, for a deletion, a generic one (`g`), as `DEL` does.
    pub fn notify(self, event: KeyEvent, key: RString) {
        let (class, name) = match event {
            KeyEvent::Changed(name) => (raw::REDISMODULE_NOTIFY_MODULE, name),
            KeyEvent::Deleted => (raw::REDISMODULE_NOTIFY_GENERIC, c"del"),
        };
        // SAFETY: a valid context and key; a static event name. Cheap when nobody listens.
        unsafe { api!(RedisModule_NotifyKeyspaceEvent)(self.0, class, name.as_ptr(), key) };
    }

    /// Propagates the command being run as it came (to the AOF, and to replicas of a master).
    pub fn replicate_verbatim(self) {
        // SAFETY: a valid context.
        unsafe { api!(RedisModule_ReplicateVerbatim)(self.0) };
    }

    /// Replicates a new state of `key` (to replicas and the AOF) as `RL.STATE <key> <encoded
    /// state>`, encoded only if something can receive it ([`propagation::needed`]).
    pub fn replicate_state(self, key: RString, state: impl FnOnce() -> Encoded) {
        if !propagation::needed(|| self.flags()) {
            return;
        }
        let state = state();
        let bytes = state.as_bytes();
        // SAFETY: format "sb" takes a Redis string, then a pointer and a length.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"RL.STATE".as_ptr(),
                c"sb".as_ptr(),
                key,
                bytes.as_ptr(),
                bytes.len(),
            )
        };
    }

    /// Replicates the deletion of `key` as `DEL <key>`, if something can receive it.
    pub fn replicate_delete(self, key: RString) {
        if propagation::needed(|| self.flags()) {
            // SAFETY: format "s" takes a Redis string.
            unsafe { api!(RedisModule_Replicate)(self.0, c"DEL".as_ptr(), c"s".as_ptr(), key) };
        }
    }
}

/// A Redis string the module owns (a key name kept while its client waits), freed when
/// dropped.
pub struct OwnedString(NonNull<raw::RedisModuleString>);

impl OwnedString {
    pub fn new(bytes: &[u8]) -> Option<OwnedString> {
        // SAFETY: no context (the string is not auto-freed) and a valid buffer, which Redis
        // copies.
        let s = unsafe {
            api!(RedisModule_CreateString)(std::ptr::null_mut(), bytes.as_ptr().cast(), bytes.len())
        };
        NonNull::new(s).map(OwnedString)
    }

    pub fn get(&self) -> RString {
        self.0.as_ptr()
    }
}

impl Drop for OwnedString {
    fn drop(&mut self) {
        // SAFETY: a string created without a context, freed once.
        unsafe { api!(RedisModule_FreeString)(std::ptr::null_mut(), self.0.as_ptr()) };
    }
}

/// A keyspace event.
pub enum KeyEvent {
    /// A limiter was stored or updated, by the command of this name.
    Changed(&'static CStr),
    /// A limiter back to fresh was deleted.
    Deleted,
}

/// What a key holds, by kind.
pub enum Holds {
    Nothing,
    /// A value of this module data type (of this module or another).
    Module(*mut raw::RedisModuleType),
    /// Any other Redis type.
    Other,
}

/// An open key, closed when dropped.
pub struct Key {
    ctx: Ctx,
    name: RString,
    key: NonNull<raw::RedisModuleKey>,
    /// What `value` found for a type (`None`: the key was empty), so `store` need not look
    /// the key up again.
    found: Option<(*mut raw::RedisModuleType, Option<NonNull<c_void>>)>,
}

impl Key {
    /// Opens a key for reading, or for reading and writing.
    pub fn open(ctx: Ctx, name: RString, write: bool) -> Option<Key> {
        let mode = raw::REDISMODULE_READ | if write { raw::REDISMODULE_WRITE } else { 0 };
        // SAFETY: a valid context and key name.
        let key = unsafe { api!(RedisModule_OpenKey)(ctx.0, name, mode as c_int) };
        NonNull::new(key.cast()).map(|key| Key {
            ctx,
            name,
            key,
            found: None,
        })
    }

    fn raw(&self) -> *mut raw::RedisModuleKey {
        self.key.as_ptr()
    }

    /// What the key holds.
    pub fn holds(&self) -> Holds {
        // SAFETY: an open key.
        unsafe {
            match api!(RedisModule_KeyType)(self.raw()) as isize {
                raw::REDISMODULE_KEYTYPE_EMPTY => Holds::Nothing,
                raw::REDISMODULE_KEYTYPE_MODULE => {
                    Holds::Module(api!(RedisModule_ModuleTypeGetType)(self.raw()))
                }
                _ => Holds::Other,
            }
        }
    }

    /// The bytes of a string key; `None` if the key holds anything else.
    pub fn string(&self) -> Option<&[u8]> {
        // SAFETY: an open key; Redis returns a pointer to `len` bytes that live while the key
        // is open and unchanged (the borrow of `self` keeps both true).
        unsafe {
            if api!(RedisModule_KeyType)(self.raw()) as isize != raw::REDISMODULE_KEYTYPE_STRING {
                return None;
            }
            let mut len = 0;
            let ptr =
                api!(RedisModule_StringDMA)(self.raw(), &mut len, raw::REDISMODULE_READ as c_int);
            (!ptr.is_null()).then(|| std::slice::from_raw_parts(ptr.cast::<u8>(), len))
        }
    }

    /// The context the key was opened in.
    pub fn ctx(&self) -> Ctx {
        self.ctx
    }

    /// The name the key was opened with.
    pub fn name(&self) -> RString {
        self.name
    }

    /// The limiter record stored at this key: `None` if the key is empty, `WrongType` if it
    /// holds anything but a limiter of type `S`.
    pub fn value<S: Stored>(&mut self) -> Result<Option<Value<'_, S>>, Error> {
        match self.holds() {
            Holds::Nothing => {
                self.found = Some((S::redis_type(), None));
                Ok(None)
            }
            Holds::Module(found) if found == S::redis_type() => {
                // SAFETY: an open key holding a value of our type, which `Value::into_raw`
                // made.
                let value =
                    NonNull::new(unsafe { api!(RedisModule_ModuleTypeGetValue)(self.raw()) });
                self.found = Some((found, value));
                Ok(value.and_then(|v| unsafe { Value::from_raw(v) }))
            }
            Holds::Module(_) | Holds::Other => Err(Error::WrongType),
        }
    }

    /// Stores a record, replacing whatever the key held, and expires the key when it is
    /// fresh again. A box of the same type and kind (a bare state, a record) is overwritten
    /// in place, a packed one replaced in the key's value (neither allocates). `expiry` is the key's expiry if the
    /// caller knows it (the previous state's reset time): an unchanged one is not set again.
    pub fn store<S: Stored>(&mut self, record: Record<S>, expiry: Option<Timestamp>) {
        let reset_at = record.reset_at();
        // What `value` already found, else a fresh look (RL.STATE comes straight here).
        if !matches!(self.found, Some((found_type, _)) if found_type == S::redis_type()) {
            let _ = self.value::<S>();
        }
        let existing = match self.found.take() {
            Some((found_type, value)) if found_type == S::redis_type() => value,
            _ => None,
        };
        // SAFETY: the key is open for writing and `existing` is its value of type `S`; the
        // new value becomes owned by Redis, which frees it through our `free` callback.
        unsafe {
            let record = match existing {
                Some(old) => Value::<S>::overwrite(old, record).err(),
                None => Some(record),
            };
            match (existing, record) {
                (_, None) => {}
                (Some(_), Some(record)) => {
                    let mut old = std::ptr::null_mut();
                    let new = Value::into_raw(record);
                    let replaced = api!(RedisModule_ModuleTypeReplaceValue)(
                        self.raw(),
                        S::redis_type(),
                        new,
                        &mut old,
                    );
                    // Redis keeps whichever of the two it did not hand back.
                    if replaced == raw::REDISMODULE_OK as c_int {
                        Value::<S>::free(old);
                    } else {
                        Value::<S>::free(new);
                    }
                }
                (None, Some(record)) => {
                    let new = Value::into_raw(record);
                    api!(RedisModule_ModuleTypeSetValue)(self.raw(), S::redis_type(), new);
                }
            }
        }
        self.updated(reset_at, expiry);
    }

    /// Records that the key's value changed (stored, or updated in place through what `value`
    /// returned): the key now expires at `reset_at`, which is set unless it is `expiry`.
    pub fn updated(&mut self, reset_at: Timestamp, expiry: Option<Timestamp>) {
        // SAFETY: the key is open for writing and holds a value.
        unsafe {
            if expiry != Some(reset_at) {
                let at = i64::try_from(reset_at.as_millis()).unwrap_or(i64::MAX);
                api!(RedisModule_SetAbsExpire)(self.raw(), at);
            }
            api!(RedisModule_SignalModifiedKey)(self.ctx.0, self.name);
        }
    }

    pub fn delete(&self) {
        // SAFETY: the key is open for writing.
        unsafe {
            api!(RedisModule_DeleteKey)(self.raw());
            api!(RedisModule_SignalModifiedKey)(self.ctx.0, self.name);
        }
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: opened by `open`, closed once.
        unsafe { api!(RedisModule_CloseKey)(self.raw()) };
    }
}
