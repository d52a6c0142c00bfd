-- PUT /users/{id} of a uniformly random id from $BENCH_IDS, with a new name and an email
-- unique per run tag (wrk arg 1), thread and request, so no PUT can collide with another.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local ids = {}
local tag, n
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  for line in io.lines(os.getenv("BENCH_IDS")) do
    if line ~= "" then ids[#ids + 1] = line end
  end
  if #ids == 0 then error("no ids in " .. os.getenv("BENCH_IDS")) end
  math.randomseed(os.time() + tid * 7919)
  tag = (args[1] or "put") .. os.time()
  n = 0
end

function request()
  n = n + 1
  local body = string.format('{"name":"Put User %d","email":"p-%s-%d-%d@bench.example.com"}',
    n, tag, tid, n)
  return wrk.format("PUT", "/users/" .. ids[math.random(#ids)], headers, body)
end
