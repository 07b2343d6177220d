-- wrk script for botpulse: POST a stats body for many distinct bots and keys, round robin.
-- Usage: wrk ... -s bench/wrk_post.lua http://127.0.0.1:PORT -- TARGETS BODY [PATH]
--   TARGETS: a file of "bot_id key" lines; BODY: the body sent with every request; PATH: the
--   request path (default /v1/bot/{bot}). "{bot}" in BODY and PATH is each target's bot id.
local requests = {}
local n = 0
local i = 0

function init(args)
  local body = args[2] or '{"guilds": 1234}'
  local path = args[3] or "/v1/bot/{bot}"
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(args[1]) do
    local bot, key = line:match("^(%S+)%s+(%S+)$")
    if bot then
      headers["Authorization"] = key
      n = n + 1
      -- "{bot}" holds no pattern magic characters, and bot ids (digits) none a replacement reads.
      requests[n] = wrk.format("POST", (path:gsub("{bot}", bot)), headers, (body:gsub("{bot}", bot)))
    end
  end
  -- Each wrk thread starts at a different offset so threads do not post for the same bot in step.
  i = math.random(n) - 1
end

function request()
  i = i % n + 1
  return requests[i]
end
