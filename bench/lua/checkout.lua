-- Checkouts of 1 to 3 items, each with a fresh Idempotency-Key. Args: <orders path> <ids file>
dofile("bench/lua/common.lua")
local path, ids
local counter = 0

function init(args)
  path = args[1]
  ids = lines(args[2])
  seed()
end

function request()
  counter = counter + 1
  return checkout_request(path, ids, "bench", counter)
end
