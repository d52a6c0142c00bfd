-- Creates exactly $BENCH_SEED users with POST /users (split between the threads; wrk arg 1
-- is the thread count), writes each new id (from the Location header) to
-- $BENCH_IDS_DIR/ids-<thread>, then creates $BENCH_IDS_DIR/done-<thread> and stops the
-- thread (bench-api.sh then interrupts wrk). Fillers after a thread's quota are GET /healthz.
-- Every answer to a POST other than 201 is reported and counted as a failure. Emails are
-- <$BENCH_SEED_TAG, default seed>-<thread>-<n>@bench.example.com, so each seeding of one run
-- needs its own tag.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local quota, sent, created, failed, out
local tag = os.getenv("BENCH_SEED_TAG") or "seed"
local dir = os.getenv("BENCH_IDS_DIR")
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  local total = tonumber(os.getenv("BENCH_SEED"))
  local nthreads = tonumber(args[1] or "2")
  quota = math.floor(total / nthreads)
  if tid == 1 then quota = total - quota * (nthreads - 1) end
  sent, created, failed = 0, 0, 0
  -- wrk calls request() once in the first thread's state to inspect the request
  -- (script_verify_request) and never sends it: that thread may send one more.
  if tid == 1 then sent = -1 end
  out = assert(io.open(dir .. "/ids-" .. tid, "w"))
end

function request()
  if sent >= quota then
    return wrk.format("GET", "/healthz")
  end
  sent = sent + 1
  local body = string.format('{"name":"Seed User %d-%d","email":"%s-%d-%d@bench.example.com"}',
    tid, sent, tag, tid, sent)
  return wrk.format("POST", "/users", headers, body)
end

function response(status, hdrs, body)
  if status == 200 then return end -- a /healthz filler
  if created + failed >= quota then return end
  local loc = hdrs["Location"] or hdrs["location"]
  if status == 201 and loc then
    created = created + 1
    out:write((string.gsub(loc, "^.*/", "")), "\n")
  else
    failed = failed + 1
    io.stderr:write("seed: POST /users answered " .. status .. ": " .. body .. "\n")
  end
  if created + failed >= quota then
    out:close()
    local f = assert(io.open(dir .. "/done-" .. tid, "w"))
    f:write(created, " ", failed, "\n")
    f:close()
    wrk.thread:stop()
  end
end
