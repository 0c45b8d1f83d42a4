-- Storefront product reads over the hot products. Args: <path prefix> <ids file>
dofile("bench/lua/common.lua")
local prefix, ids

function init(args)
  prefix = args[1]
  ids = lines(args[2])
  seed()
end

function request()
  return wrk.format("GET", prefix .. ids[math.random(#ids)])
end
