-- PUT /users/{id} of a uniformly random id from $BENCH_IDS, with a new name and an email
-- unique per run tag (wrk arg 1), thread and request, so no PUT can collide with another.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local ids
local tag, n
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  ids = load_ids("BENCH_IDS")
  math.randomseed(os.time() + tid * 7919)
  tag = (args[1] or "put") .. os.time()
  n = 0
end

function request()
  n = n + 1
  return wrk.format("PUT", "/users/" .. ids[math.random(#ids)], headers, user_body("Put", tag, n))
end
