//! The command table: names, handlers, flags, arity, key positions and documentation, all
//! registered at load and visible in `COMMAND INFO`, `COMMAND DOCS` and `COMMAND GETKEYS`.
//!
//! Redis 7.0 has no safe wrapper for command info in the `redis-module` crate, so this builds
//! the raw `RedisModuleCommandInfo` (Redis copies it) for each command.

use std::ffi::{CStr, c_int};
use std::mem::MaybeUninit;
use std::ptr;

use redis_module::raw;

use crate::commands;
use crate::redis::{Ctx, api};

type Handler =
    extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

/// One documented argument after the command name.
struct ArgDoc {
    name: &'static CStr,
    kind: raw::RedisModuleCommandArgType,
    token: Option<&'static CStr>,
    optional: bool,
}

const fn arg(name: &'static CStr, kind: raw::RedisModuleCommandArgType) -> ArgDoc {
    ArgDoc {
        name,
        kind,
        token: None,
        optional: false,
    }
}

const fn option(
    token: &'static CStr,
    name: &'static CStr,
    kind: raw::RedisModuleCommandArgType,
) -> ArgDoc {
    ArgDoc {
        name,
        kind,
        token: Some(token),
        optional: true,
    }
}

const KEY: raw::RedisModuleCommandArgType = raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY;
const INTEGER: raw::RedisModuleCommandArgType =
    raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER;
const STRING: raw::RedisModuleCommandArgType =
    raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_STRING;
const PURE_TOKEN: raw::RedisModuleCommandArgType =
    raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_PURE_TOKEN;

/// One command and its documentation.
pub struct CommandDoc {
    pub name: &'static CStr,
    handler: Handler,
    pub flags: &'static CStr,
    pub arity: c_int,
    key_flags: u32,
    summary: &'static CStr,
    args: &'static [ArgDoc],
}

const DECIDE_KEY: u32 =
    raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_ACCESS | raw::REDISMODULE_CMD_KEY_UPDATE;

/// The arguments of RL.FIXED and RL.SLIDING.
const WINDOW_ARGS: &[ArgDoc] = &[
    arg(c"key", KEY),
    arg(c"limit", INTEGER),
    arg(c"window", STRING),
    option(c"COST", c"cost", INTEGER),
    option(c"DRYRUN", c"dryrun", PURE_TOKEN),
];

pub const COMMANDS: [CommandDoc; 4] = [
    CommandDoc {
        name: c"RL.FIXED",
        handler: commands::rl_fixed,
        flags: c"write deny-oom fast",
        arity: -4,
        key_flags: DECIDE_KEY,
        summary: c"Takes COST units (default 1) from a fixed-window limit of `limit` units per `window`, windows aligned to the epoch. Replies [allowed, limit, remaining, retry_after_ms, reset_after_ms].",
        args: WINDOW_ARGS,
    },
    CommandDoc {
        name: c"RL.SLIDING",
        handler: commands::rl_sliding,
        flags: c"write deny-oom fast",
        arity: -4,
        key_flags: DECIDE_KEY,
        summary: c"Takes COST units (default 1) from a strict sliding-window limit: never more than `limit` units in any `window`. Replies [allowed, limit, remaining, retry_after_ms, reset_after_ms].",
        args: WINDOW_ARGS,
    },
    CommandDoc {
        name: c"RL.TOKEN",
        handler: commands::rl_token,
        flags: c"write deny-oom fast",
        arity: -4,
        key_flags: DECIDE_KEY,
        summary: c"Takes COST tokens (default 1) from a token bucket of `capacity` tokens refilled at `rate` tokens per PER (default 1s). Replies [allowed, limit, remaining, retry_after_ms, reset_after_ms].",
        args: &[
            arg(c"key", KEY),
            arg(c"capacity", INTEGER),
            arg(c"rate", INTEGER),
            option(c"PER", c"period", STRING),
            option(c"COST", c"cost", INTEGER),
            option(c"DRYRUN", c"dryrun", PURE_TOKEN),
        ],
    },
    CommandDoc {
        name: c"RL.STATE",
        handler: commands::rl_state,
        flags: c"write deny-oom fast",
        arity: 3,
        key_flags: raw::REDISMODULE_CMD_KEY_OW | raw::REDISMODULE_CMD_KEY_UPDATE,
        summary: c"Sets a limiter state computed by a master. Internal: accepted only from the master link or an AOF being loaded.",
        args: &[arg(c"key", KEY), arg(c"state", STRING)],
    },
];

const INFO_VERSION: raw::RedisModuleCommandInfoVersion = raw::RedisModuleCommandInfoVersion {
    version: 1,
    sizeof_historyentry: size_of::<raw::RedisModuleCommandHistoryEntry>(),
    sizeof_keyspec: size_of::<raw::RedisModuleCommandKeySpec>(),
    sizeof_arg: size_of::<raw::RedisModuleCommandArg>(),
};

/// Creates every command with its key spec and docs; `Err` names the one that failed.
pub fn register(ctx: Ctx) -> Result<(), &'static CStr> {
    for doc in &COMMANDS {
        // SAFETY: a valid load-time context, static NUL-terminated strings, and info structs
        // that live until `RedisModule_SetCommandInfo` has copied them.
        unsafe {
            let created = api!(RedisModule_CreateCommand)(
                ctx.0,
                doc.name.as_ptr(),
                Some(doc.handler),
                doc.flags.as_ptr(),
                1,
                1,
                1,
            );
            let command = api!(RedisModule_GetCommand)(ctx.0, doc.name.as_ptr());
            if created != raw::REDISMODULE_OK as c_int || command.is_null() {
                return Err(doc.name);
            }
            let mut key_specs = [key_spec(doc.key_flags), MaybeUninit::zeroed().assume_init()];
            let mut args: Vec<raw::RedisModuleCommandArg> = doc.args.iter().map(raw_arg).collect();
            args.push(MaybeUninit::zeroed().assume_init());
            let info = raw::RedisModuleCommandInfo {
                version: &INFO_VERSION,
                summary: doc.summary.as_ptr(),
                complexity: c"O(1)".as_ptr(),
                since: c"1.0.0".as_ptr(),
                history: ptr::null_mut(),
                tips: ptr::null(),
                arity: doc.arity,
                key_specs: key_specs.as_mut_ptr(),
                args: args.as_mut_ptr(),
            };
            if api!(RedisModule_SetCommandInfo)(command, &info) != raw::REDISMODULE_OK as c_int {
                return Err(doc.name);
            }
        }
    }
    Ok(())
}

/// The key is argument 1, alone.
fn key_spec(flags: u32) -> raw::RedisModuleCommandKeySpec {
    raw::RedisModuleCommandKeySpec {
        notes: ptr::null(),
        flags: u64::from(flags),
        begin_search_type: raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX,
        bs: raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
            index: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 { pos: 1 },
        },
        find_keys_type: raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE,
        fk: raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
            range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 {
                lastkey: 0,
                keystep: 1,
                limit: 0,
            },
        },
    }
}

fn raw_arg(doc: &ArgDoc) -> raw::RedisModuleCommandArg {
    raw::RedisModuleCommandArg {
        name: doc.name.as_ptr(),
        type_: doc.kind,
        key_spec_index: if doc.kind == KEY { 0 } else { -1 },
        token: doc.token.map_or(ptr::null(), CStr::as_ptr),
        summary: ptr::null(),
        since: ptr::null(),
        flags: if doc.optional {
            raw::REDISMODULE_CMD_ARG_OPTIONAL as c_int
        } else {
            0
        },
        deprecated_since: ptr::null(),
        subargs: ptr::null_mut(),
        display_text: ptr::null(),
    }
}
