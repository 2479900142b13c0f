-- wrk script: replay pre-signed requests, each exactly once per thread stride.
-- Usage: wrk -s replay.lua URL -- FILE PATH NTHREADS
-- FILE holds three lines per request: X-Amz-Date, Authorization, body (one line of JSON).
--
-- A thread that runs out of requests starts over (wrk cannot stop one thread early without
-- skewing its requests/s), but counts each request it sends a second time: done() prints
-- "replayed: N", and bench/ingest.py refuses a result with N > 0, because the gateway answers
-- a replayed signature from its signature table without storing anything.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  threads[#threads + 1] = thread
end

function init(args)
  reqs = {}
  local f = assert(io.open(args[1], "r"))
  while true do
    local date = f:read("*l")
    if not date then break end
    local auth = f:read("*l")
    local body = f:read("*l")
    reqs[#reqs + 1] = wrk.format("POST", args[2], {
      ["Content-Type"] = "application/json",
      ["X-Amz-Date"] = date,
      ["Authorization"] = auth,
    }, body)
  end
  f:close()
  step = tonumber(args[3])
  idx = tid + 1
  wrapped = false
  replayed = 0
end

function request()
  local r = reqs[idx]
  if wrapped then replayed = replayed + 1 end
  idx = idx + step
  if idx > #reqs then
    idx = tid + 1
    wrapped = true
  end
  return r
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + (t:get("replayed") or 0)
  end
  io.write(string.format("replayed: %d\n", total))
end
