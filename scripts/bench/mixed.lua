-- 90% GET /users/{id} and 10% PUT /users/{id}, both of uniformly random ids from $BENCH_IDS
-- (a PUT sets a new name and an email unique per run tag, thread and request). Each write
-- evicts the id on every replica, so reads of it miss until refilled.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local ids
local tag, n
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  ids = load_ids("BENCH_IDS")
  math.randomseed(os.time() + tid * 7919)
  tag = (args[1] or "mixed") .. os.time()
  n = 0
end

function request()
  n = n + 1
  local id = ids[math.random(#ids)]
  if n % 10 == 0 then
    return wrk.format("PUT", "/users/" .. id, headers, user_body("Mixed", tag, n))
  end
  return wrk.format("GET", "/users/" .. id)
end
