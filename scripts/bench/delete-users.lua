-- DELETE /users/{id} of each id in $BENCH_DELETE_IDS once, each thread its own share, in
-- order. When a thread has used its share it deletes its last id again: those 404s show up
-- as non-2xx, so a run longer than the pool of ids cannot pass for a clean one.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local ids
local pos, step

function init(args)
  ids = load_ids("BENCH_DELETE_IDS")
  pos, step = tid, 2 -- two wrk threads
end

function request()
  local id = ids[math.min(pos, #ids)]
  pos = pos + step
  return wrk.format("DELETE", "/users/" .. id)
end
