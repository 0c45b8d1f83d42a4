-- Checkouts of 1 to 3 items, each with a fresh Idempotency-Key. Args: <orders path> <ids file>
dofile("bench/lua/common.lua")
local path, ids
local counter = 0

function init(args)
  path = args[1]
  ids = lines(args[2])
  seed()
end

function checkout_request()
  counter = counter + 1
  local items = {}
  for i = 1, math.random(3) do
    items[i] = string.format('{"product_id":"%s","quantity":1}', ids[math.random(#ids)])
  end
  local body = '{"customer_email":"load@example.com","items":[' .. table.concat(items, ",") .. ']}'
  local key = string.format("bench-%d-%d-%d", os.time(), thread_id or 0, counter)
  return wrk.format("POST", path, {["Content-Type"] = "application/json", ["Idempotency-Key"] = key}, body)
end

request = checkout_request
