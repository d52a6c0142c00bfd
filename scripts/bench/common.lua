-- Shared by the wrk scripts of scripts/bench-api.sh: thread numbering and a one-line,
-- machine-readable summary printed by done():
--   RESULT <requests/s> <p50 ms> <p99 ms> <non-2xx> <socket errors> <requests>
-- wrk counts every response with status >= 400 in errors.status (1xx/3xx never occur here).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT %.0f %.2f %.2f %d %d %d\n",
    summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect + e.read + e.write + e.timeout, summary.requests))
end

-- The ids in the file named by the environment variable `var` (one per line; an error if
-- there are none).
function load_ids(var)
  local ids = {}
  for line in io.lines(os.getenv(var)) do
    if line ~= "" then ids[#ids + 1] = line end
  end
  if #ids == 0 then error("no ids in " .. os.getenv(var)) end
  return ids
end

-- A user body whose email is unique per `tag` (run and purpose), thread and request `n`.
function user_body(kind, tag, n)
  return string.format('{"name":"%s User %d","email":"%s-%s-%d-%d@bench.example.com"}',
    kind, n, string.lower(string.sub(kind, 1, 1)), tag, tid, n)
end

-- For the scripts that write random seeded ids (put-users-random, mixed): the ids of
-- $BENCH_IDS, a random seed per thread, a run tag (wrk arg 1, else `default_tag`) and a
-- request counter `n` for unique emails.
function init_random_writes(args, default_tag)
  ids = load_ids("BENCH_IDS")
  math.randomseed(os.time() + tid * 7919)
  tag = (args[1] or default_tag) .. os.time()
  n = 0
end

-- PUT /users/{id} with a new name and an email unique per run, thread and request.
function put_user(id, kind)
  return wrk.format("PUT", "/users/" .. id, { ["Content-Type"] = "application/json" },
    user_body(kind, tag, n))
end
