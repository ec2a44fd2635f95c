use redis_module::redis_module;
redis_module! { name: "ratelimit", version: 1, allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc), data_types: [], }
