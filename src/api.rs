//! Raw access to the Redis module API: [`api!`] reads a function pointer Redis filled in at
//! load time, and [`missing_api`] lists the ones this Redis lacks, so the module refuses to
//! load rather than fail later. A leaf: it imports nothing of this crate.

use redis_module::raw;

/// The raw API function `$name`, checked present at load time.
macro_rules! api {
    ($name:ident) => {{
        // SAFETY: a plain read of a pointer Redis wrote once, before any command ran.
        #[allow(unused_unsafe)]
        let f = unsafe { redis_module::raw::$name };
        match f {
            Some(f) => f,
            // `missing_api` refused the load if it is absent: this cannot fire.
            None => panic!(concat!(stringify!($name), " is missing")),
        }
    }};
}
pub(crate) use api;

/// Whether this server can put module commands in an ACL category of their own
/// (`RedisModule_AddACLCategory` and `RedisModule_SetCommandACLCategories`: Redis 7.4,
/// Valkey 8). Optional: without them the module loads all the same.
pub fn has_acl_categories() -> bool {
    // SAFETY: plain reads of pointers Redis wrote during RedisModule_Init.
    let (add, set) = unsafe {
        (
            raw::RedisModule_AddACLCategory,
            raw::RedisModule_SetCommandACLCategories,
        )
    };
    add.is_some() && set.is_some()
}

/// The names of the API functions this module needs that Redis did not provide.
pub fn missing_api() -> Vec<&'static str> {
    macro_rules! check {
        ($($name:ident),* $(,)?) => {{
            let mut missing = Vec::new();
            // SAFETY: plain reads of pointers Redis wrote during RedisModule_Init.
            $(if unsafe { raw::$name }.is_none() { missing.push(stringify!($name)); })*
            missing
        }};
    }
    check!(
        RedisModule_OpenKey,
        RedisModule_CloseKey,
        RedisModule_KeyType,
        RedisModule_ModuleTypeGetType,
        RedisModule_ModuleTypeGetValue,
        RedisModule_ModuleTypeSetValue,
        RedisModule_ModuleTypeReplaceValue,
        RedisModule_DeleteKey,
        RedisModule_SetAbsExpire,
        RedisModule_SignalModifiedKey,
        RedisModule_NotifyKeyspaceEvent,
        RedisModule_StringPtrLen,
        RedisModule_StringDMA,
        RedisModule_Milliseconds,
        RedisModule_GetContextFlags,
        RedisModule_IsKeysPositionRequest,
        RedisModule_KeyAtPos,
        RedisModule_Replicate,
        RedisModule_ReplicateVerbatim,
        RedisModule_ReplyWithArray,
        RedisModule_ReplyWithMap,
        RedisModule_ReplyWithLongLong,
        RedisModule_ReplyWithStringBuffer,
        RedisModule_ReplyWithSimpleString,
        RedisModule_ReplyWithError,
        RedisModule_EmitAOF,
        RedisModule_SaveStringBuffer,
        RedisModule_LoadStringBuffer,
        RedisModule_IsIOError,
        RedisModule_Free,
        RedisModule_DigestAddStringBuffer,
        RedisModule_DigestEndSequence,
        RedisModule_SetModuleOptions,
        RedisModule_CreateCommand,
        RedisModule_GetCommand,
        RedisModule_SetCommandInfo,
        RedisModule_RegisterInfoFunc,
        RedisModule_InfoAddSection,
        RedisModule_InfoBeginDictField,
        RedisModule_InfoEndDictField,
        RedisModule_InfoAddFieldULongLong,
        RedisModule_CreateString,
        RedisModule_FreeString,
        RedisModule_GetSelectedDb,
        RedisModule_SelectDb,
        RedisModule_BlockClient,
        RedisModule_UnblockClient,
        RedisModule_SetDisconnectCallback,
        RedisModule_GetBlockedClientPrivateData,
        RedisModule_GetBlockedClientHandle,
        RedisModule_CreateTimer,
        RedisModule_StopTimer,
        RedisModule_SubscribeToServerEvent,
        RedisModule_GetServerInfo,
        RedisModule_ServerInfoGetFieldUnsigned,
        RedisModule_FreeServerInfo,
    )
}
