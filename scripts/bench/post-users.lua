-- POST /users with an email unique per run tag (wrk arg 1), thread and request.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local tag, n
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  tag = (args[1] or "run") .. os.time()
  n = 0
end

function request()
  n = n + 1
  return wrk.format("POST", "/users", headers, user_body("Bench", tag, n))
end
