-- 90% GET /users/{id} and 10% PUT /users/{id}, both of uniformly random ids from $BENCH_IDS
-- (a PUT sets a new name and an email unique per run tag, thread and request). Each write
-- evicts the id on every replica, so reads of it miss until refilled.
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
  tag = (args[1] or "mixed") .. os.time()
  n = 0
end

function request()
  n = n + 1
  local id = ids[math.random(#ids)]
  if n % 10 == 0 then
    local body = string.format('{"name":"Mixed User %d","email":"m-%s-%d-%d@bench.example.com"}',
      n, tag, tid, n)
    return wrk.format("PUT", "/users/" .. id, headers, body)
  end
  return wrk.format("GET", "/users/" .. id)
end
