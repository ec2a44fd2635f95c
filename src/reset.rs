//! `RL.RESET key [key ...]`: deletes the rate limiters among the keys and replies how many
//! it deleted. All or nothing: if any key holds something that is not a limiter, nothing is
//! deleted and the reply is `WRONGTYPE`. Each deletion replicates as `DEL` and fires `del`,
//! as `DEL` does.

use std::ffi::c_int;

use redis_module::raw;

use crate::algorithms::ALGORITHMS;
use crate::command::{self, Command, Keys};
use crate::error::Error;
use crate::redis::{Ctx, Holds, Key, KeyEvent, RString};
use crate::wait;

pub const COMMAND: Command = Command {
    name: c"RL.RESET",
    handler,
    flags: c"write fast",
    keys: Keys::All(raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_DELETE),
    summary: c"Deletes the rate limiters among the keys (WRONGTYPE, and nothing deleted, if one holds another type). Replies the number deleted.",
    params: &[],
    shared: &[],
};

extern "C" fn handler(ctx: *mut raw::RedisModuleCtx, argv: *mut RString, argc: c_int) -> c_int {
    command::run(ctx, argv, argc, reset)
}

fn reset(ctx: Ctx, argv: &[RString]) -> Result<(), Error> {
    let [_, names @ ..] = argv else {
        return Err(Error::WrongArity);
    };
    // All or nothing: every key is looked at before any is deleted.
    for name in names {
        let Some(key) = Key::open(ctx, *name, false) else {
            continue;
        };
        match key.holds() {
            Holds::Nothing => {}
            Holds::Module(found) if is_limiter(found) => {}
            Holds::Module(_) | Holds::Other => return Err(Error::NotALimiter),
        }
    }
    // Each key is opened again as it is deleted, so a key named twice is found gone the
    // second time: deleted, replicated and counted once, as DEL does.
    let mut deleted = 0;
    for name in names {
        let Some(key) = Key::open(ctx, *name, true) else {
            continue;
        };
        if matches!(key.holds(), Holds::Module(_)) {
            key.delete();
            ctx.replicate_delete(key.name());
            ctx.notify(KeyEvent::Deleted, key.name());
            deleted += 1;
        }
    }
    if deleted > 0 && wait::has_waiters(ctx, names) {
        // Fresh limiters: their waiters may go now.
        wait::wake(ctx, names);
    }
    ctx.reply_integer(deleted);
    Ok(())
}

fn is_limiter(found: *mut raw::RedisModuleType) -> bool {
    (ALGORITHMS.iter()).any(|entry| *(entry.data_type)().raw_type.borrow() == found)
}
