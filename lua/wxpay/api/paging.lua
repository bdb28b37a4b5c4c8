--- The lazy page iterator every list of the API modules shares (partnerships, coupon
-- stocks, a user's coupons): one page in memory, fetched only as the loop advances.
-- @module wxpay.api.paging

local M = {}

--- An iterator over every item. `fetch(limit, offset)` returns a page `{ data, offset,
-- limit, total_count? }` or nil and an error. `mode` is `"page"` (offset is a page index:
-- next = offset + 1) or `"item"` (next = offset + #data). It stops after a short or empty
-- page, when `total_count` is reached, or if the offset would not advance: it steps from
-- the offset and page size the server says it used, so a server that ignores `offset`
-- shows up as an offset that does not advance instead of a loop. A failure raises the
-- structured error inside the loop (and again on a later call).
function M.iterate(fetch, limit, offset, mode)
  local buf, idx, done, failure, total = nil, 0, false, nil, nil
  return function()
    if buf and idx < #buf then
      idx = idx + 1
      return buf[idx]
    end
    if failure then error(failure, 0) end
    if done then return nil end
    local page, err = fetch(limit, offset)
    if not page then
      failure = err
      error(err, 0)
    end
    local n = #page.data
    total = total or page.total_count
    if n == 0 or total == 0 then
      done = true
      return nil
    end
    local size = page.limit or limit
    local next_offset = mode == "page" and page.offset + 1 or page.offset + n
    local position = (mode == "page" and page.offset * size or page.offset) + n
    if n < size or (total and position >= total) or next_offset <= offset then done = true end
    offset = next_offset
    buf, idx = page.data, 1
    return buf[1]
  end
end

return M
