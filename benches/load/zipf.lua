-- wrk script: tiles drawn from a Zipf distribution (tile k of N with probability ∝ 1/k^S), as
-- many map users looking at overlapping areas do: most requests hit a few popular tiles.
-- Usage: wrk -s zipf.lua URL -- [query suffix, e.g. "?jwt=..."]
local N, S = 10000, 1.0
local cdf = {}
local suffix = ""

function init(args)
  suffix = args[1] or ""
  local sum = 0
  for k = 1, N do
    sum = sum + 1 / k ^ S
    cdf[k] = sum
  end
  for k = 1, N do
    cdf[k] = cdf[k] / sum
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000003))
end

local function pick()
  local u = math.random()
  local lo, hi = 1, N
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  local k = pick()
  return wrk.format("GET", "/wmts/zipf/" .. (k % 32) .. "/" .. k .. ".png" .. suffix)
end
