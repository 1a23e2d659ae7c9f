-- wrk: admin_msgwithdraw of a distinct seeded message per request (see common.lua).
-- wrk -t2 -c64 -d10s -s benches/http/recall.lua http://HOST:PORT -- QUERY MESSAGES PAIRS TIME THREADS
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

common.start("/v4/openim/admin_msgwithdraw", function(i, p)
   return string.format('{"From_Account":"s%d","To_Account":"r%d","MsgKey":"%d_%d_%s"}', p, p, i, i, time)
end, true)
