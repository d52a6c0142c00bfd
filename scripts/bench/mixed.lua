-- 90% GET /users/{id} and 10% PUT /users/{id}, both of uniformly random ids from $BENCH_IDS
-- (a PUT sets a new name and an email unique per run tag, thread and request). Each write
-- evicts the id on every replica, so reads of it miss until refilled.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function init(args)
  init_random_writes(args, "mixed")
end

function request()
  n = n + 1
  local id = ids[math.random(#ids)]
  if n % 10 == 0 then
    return put_user(id, "Mixed")
  end
  return wrk.format("GET", "/users/" .. id)
end
