-- 80% product reads, 15% lists, 5% checkouts.
-- Args: <store prefix> <product ids file> <list urls file> <checkout ids file>
dofile("bench/lua/common.lua")
local store, product_ids, urls, checkout_ids
local counter = 0

function init(args)
  store = args[1]
  product_ids = lines(args[2])
  urls = lines(args[3])
  checkout_ids = lines(args[4])
  seed()
end

function request()
  local roll = math.random(100)
  if roll <= 80 then
    return wrk.format("GET", store .. "/products/" .. product_ids[math.random(#product_ids)])
  elseif roll <= 95 then
    return wrk.format("GET", urls[math.random(#urls)])
  end
  counter = counter + 1
  return checkout_request(store .. "/orders", checkout_ids, "mixed", counter)
end
