-- Storefront lists: first pages and cursor pages, with a filter. Args: <unused> <urls file>
dofile("bench/lua/common.lua")
local urls

function init(args)
  urls = lines(args[2])
  seed()
end

function request()
  return wrk.format("GET", urls[math.random(#urls)])
end
