//! What a command is to Redis: name, handler, flags, arity, key spec and documentation, all
//! registered at load and visible in `COMMAND INFO`, `COMMAND DOCS` and `COMMAND GETKEYS`;
//! and how a handler runs ([`run`]): under the panic guard, its error turned into the reply.
//!
//! Arity and argument docs derive from the command's parameter list, the same one its parser
//! reads. Redis 7.0 has no safe wrapper for command info in the `redis-module` crate, so this
//! builds the raw `RedisModuleCommandInfo` (Redis copies it).

use std::ffi::{CStr, c_int};
use std::mem::MaybeUninit;
use std::ptr;

use redis_module::raw;

use crate::api::api;
use crate::error::Error;
use crate::guard;
use crate::redis::{Ctx, RString};
use ratelimit_core::param::{Kind, Param};

/// A command handler as Redis calls it.
pub type Handler = extern "C" fn(*mut raw::RedisModuleCtx, *mut RString, c_int) -> c_int;

/// One command: everything Redis and its clients learn about it.
pub struct Command {
    pub name: &'static CStr,
    pub handler: Handler,
    pub flags: &'static CStr,
    pub keys: Keys,
    pub summary: &'static CStr,
    /// The arguments after the key: the command's own, then the options it shares.
    pub params: &'static [Param],
    pub shared: &'static [Param],
}

/// Where a command's keys are and how it uses them (`REDISMODULE_CMD_KEY_*` flags).
#[derive(Clone, Copy)]
pub enum Keys {
    /// One key, argument 1.
    One(u32),
    /// Every argument from 1 on is a key.
    All(u32),
    /// Argument 1 says how many keys follow it (`numkeys key [key ...]`, as `EVAL`); the
    /// command's first parameter repeats, once per key.
    Counted(u32),
}

/// The key flags of a command that reads, decides and updates its key.
pub const DECIDE_KEY: u32 =
    raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_ACCESS | raw::REDISMODULE_CMD_KEY_UPDATE;

impl Command {
    fn all_params(&self) -> impl Iterator<Item = &'static Param> {
        self.params.iter().chain(self.shared)
    }

    /// The name, the key and the positional arguments; negative ("at least") with options
    /// or more keys.
    pub fn arity(&self) -> c_int {
        let required = self.all_params().filter(|p| !p.optional).count();
        let arity = 2 + required as c_int;
        let options = self.all_params().any(|p| p.optional);
        if matches!(self.keys, Keys::Counted(_)) {
            -(arity + 1)
        } else if options || matches!(self.keys, Keys::All(_)) {
            -arity
        } else {
            arity
        }
    }
}

/// Runs a handler's body under the panic guard; an error (or a panic) becomes the reply.
pub fn run(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut RString,
    argc: c_int,
    body: impl FnOnce(Ctx, &[RString]) -> Result<(), Error>,
) -> c_int {
    let ctx = Ctx(ctx);
    let argv = match usize::try_from(argc) {
        // SAFETY: Redis passes `argc` valid strings.
        Ok(len) if !argv.is_null() => unsafe { std::slice::from_raw_parts(argv, len) },
        _ => &[],
    };
    match guard::catch(|| body(ctx, argv)) {
        Some(Ok(())) => {}
        Some(Err(error)) => ctx.reply_error(error),
        None => ctx.reply_error(Error::Internal),
    }
    raw::REDISMODULE_OK as c_int
}

const INFO_VERSION: raw::RedisModuleCommandInfoVersion = raw::RedisModuleCommandInfoVersion {
    version: 1,
    sizeof_historyentry: size_of::<raw::RedisModuleCommandHistoryEntry>(),
    sizeof_keyspec: size_of::<raw::RedisModuleCommandKeySpec>(),
    sizeof_arg: size_of::<raw::RedisModuleCommandArg>(),
};

/// Creates a command with its key spec and docs, in the ACL category `category` if given
/// (the server must have `RedisModule_SetCommandACLCategories`); `Err` names it if Redis
/// refused.
pub fn register(
    ctx: Ctx,
    command: &Command,
    category: Option<&'static CStr>,
) -> Result<(), &'static CStr> {
    let name = command.name;
    // SAFETY: a valid load-time context, static NUL-terminated strings, and info structs
    // that live until `RedisModule_SetCommandInfo` has copied them.
    unsafe {
        // Counted keys are found from the key spec alone (Redis marks the command
        // `movablekeys`): the legacy range says none.
        let (flags, first_key, last_key) = match command.keys {
            Keys::One(flags) => (flags, 1, 1),
            Keys::All(flags) => (flags, 1, -1),
            Keys::Counted(flags) => (flags, 0, 0),
        };
        let created = api!(RedisModule_CreateCommand)(
            ctx.0,
            name.as_ptr(),
            Some(command.handler),
            command.flags.as_ptr(),
            first_key,
            last_key,
            c_int::from(first_key != 0),
        );
        let handle = api!(RedisModule_GetCommand)(ctx.0, name.as_ptr());
        if created != raw::REDISMODULE_OK as c_int || handle.is_null() {
            return Err(name);
        }
        let mut key_specs = [
            key_spec(flags, command.keys),
            MaybeUninit::zeroed().assume_init(),
        ];
        let counted = matches!(command.keys, Keys::Counted(_));
        let mut args = Vec::new();
        if counted {
            args.push(doc_arg(
                c"numkeys",
                raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER,
                None,
                false,
            ));
        }
        args.push(key_arg(!matches!(command.keys, Keys::One(_))));
        args.extend(command.all_params().map(raw_arg));
        if counted && args.len() > 2 {
            args[2].flags |= raw::REDISMODULE_CMD_ARG_MULTIPLE as c_int;
        }
        args.push(MaybeUninit::zeroed().assume_init());
        let info = raw::RedisModuleCommandInfo {
            version: &INFO_VERSION,
            summary: command.summary.as_ptr(),
            complexity: c"O(1)".as_ptr(),
            since: c"1.0.0".as_ptr(),
            history: ptr::null_mut(),
            tips: ptr::null(),
            arity: command.arity(),
            key_specs: key_specs.as_mut_ptr(),
            args: args.as_mut_ptr(),
        };
        if api!(RedisModule_SetCommandInfo)(handle, &info) != raw::REDISMODULE_OK as c_int {
            return Err(name);
        }
        if let Some(category) = category {
            let set = api!(RedisModule_SetCommandACLCategories)(handle, category.as_ptr());
            if set != raw::REDISMODULE_OK as c_int {
                return Err(name);
            }
        }
    }
    Ok(())
}

/// The search starts at argument 1: one key there, every argument from there on, or a count
/// there and that many keys after it.
fn key_spec(flags: u32, keys: Keys) -> raw::RedisModuleCommandKeySpec {
    let (find_keys_type, fk) = match keys {
        Keys::One(_) | Keys::All(_) => (
            raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE,
            raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
                range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 {
                    // Relative to the first key: 0 for one key, -1 for every argument after it.
                    lastkey: if matches!(keys, Keys::All(_)) { -1 } else { 0 },
                    keystep: 1,
                    limit: 0,
                },
            },
        ),
        Keys::Counted(_) => (
            raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_KEYNUM,
            raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
                keynum: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_2 {
                    keynumidx: 0,
                    firstkey: 1,
                    keystep: 1,
                },
            },
        ),
    };
    raw::RedisModuleCommandKeySpec {
        notes: ptr::null(),
        flags: u64::from(flags),
        begin_search_type: raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX,
        bs: raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
            index: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 { pos: 1 },
        },
        find_keys_type,
        fk,
    }
}

fn doc_arg(
    name: &'static CStr,
    type_: raw::RedisModuleCommandArgType,
    token: Option<&'static CStr>,
    optional: bool,
) -> raw::RedisModuleCommandArg {
    raw::RedisModuleCommandArg {
        name: name.as_ptr(),
        type_,
        key_spec_index: -1,
        token: token.map_or(ptr::null(), CStr::as_ptr),
        summary: ptr::null(),
        since: ptr::null(),
        flags: if optional {
            raw::REDISMODULE_CMD_ARG_OPTIONAL as c_int
        } else {
            0
        },
        deprecated_since: ptr::null(),
        subargs: ptr::null_mut(),
        display_text: ptr::null(),
    }
}

fn key_arg(multiple: bool) -> raw::RedisModuleCommandArg {
    let flags = if multiple {
        raw::REDISMODULE_CMD_ARG_MULTIPLE as c_int
    } else {
        0
    };
    raw::RedisModuleCommandArg {
        key_spec_index: 0,
        flags,
        ..doc_arg(
            c"key",
            raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY,
            None,
            false,
        )
    }
}

fn raw_arg(param: &Param) -> raw::RedisModuleCommandArg {
    let type_ = match param.kind {
        Kind::Units | Kind::Amount => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER,
        Kind::Duration | Kind::Bytes => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_STRING,
        Kind::Flag => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_PURE_TOKEN,
    };
    doc_arg(param.name, type_, param.token, param.optional)
}
