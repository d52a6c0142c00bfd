-- PUT /users/{id} of a uniformly random id from $BENCH_IDS, with a new name and an email
-- unique per run tag (wrk arg 1), thread and request, so no PUT can collide with another.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function init(args)
  init_random_writes(args, "put")
end

function request()
  n = n + 1
  return put_user(ids[math.random(#ids)], "Put")
end
