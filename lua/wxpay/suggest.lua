--- "Did you mean": the known name closest to a mistyped one (config keys).
-- @module wxpay.suggest

local M = {}

-- Edit distance with swaps of neighbours (optimal string alignment): `timout` and
-- `tiemout` are both one edit from `timeout`.
local function distance(a, b)
  local prev2, prev = nil, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      if prev2 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        cur[j] = math.min(cur[j], prev2[j - 2] + 1)
      end
    end
    prev2, prev = prev, cur
  end
  return prev[#b]
end
M.distance = distance

--- The name of `known` (a set: name -> true) closest to `name`: the same but for case and
-- `-`/`_`, else at most two edits away (the alphabetically first on a tie); nil if none.
-- @tparam string name
-- @tparam table known
-- @treturn string|nil
function M.closest(name, known)
  local norm = name:lower():gsub("-", "_")
  if known[norm] then return norm end
  local best, bestd
  for k in pairs(known) do
    local d = distance(norm, k)
    if d <= 2 and (not bestd or d < bestd or (d == bestd and k < best)) then best, bestd = k, d end
  end
  return best
end

return M
