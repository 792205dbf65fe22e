-- wrk script: every request a tile never requested before (a cold cache: every one a miss).
-- Usage: wrk -s cold.lua URL -- [query suffix, e.g. "?jwt=..."]
local suffix = ""
local prefix = ""
local n = 0

function init(args)
  suffix = args[1] or ""
  math.randomseed(os.time() + math.floor(os.clock() * 1000003))
  prefix = tostring(math.random(1, 1000000000))
end

function request()
  n = n + 1
  return wrk.format("GET", "/wmts/cold/" .. prefix .. "/" .. n .. ".png" .. suffix)
end
