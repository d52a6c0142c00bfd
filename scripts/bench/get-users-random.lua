-- GET /users/{id} with ids from the file in $BENCH_IDS (one per line).
-- `wrk ... -- seq` walks the ids in order (each thread its share: warms the cache);
-- default: a uniformly random id per request.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local ids
local mode, pos, step

function init(args)
  ids = load_ids("BENCH_IDS")
  math.randomseed(os.time() + tid * 7919)
  mode = args[1] or "random"
  pos, step = tid, 2 -- two wrk threads
end

function request()
  local id
  if mode == "seq" then
    id = ids[(pos - 1) % #ids + 1]
    pos = pos + step
  else
    id = ids[math.random(#ids)]
  end
  return wrk.format("GET", "/users/" .. id)
end
