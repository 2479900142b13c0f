-- wrk script: replay pre-signed requests, each exactly once per thread stride.
-- Usage: wrk -s replay.lua URL -- FILE PATH NTHREADS
-- FILE holds three lines per request: X-Amz-Date, Authorization, body (one line of JSON).
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
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
end

function request()
  local r = reqs[idx]
  idx = idx + step
  if idx > #reqs then idx = tid + 1 end
  return r
end
