-- wrk: the cheapest authenticated answer — account_check of one account (an account lookup
-- behind the same UserSig check, admin check and JSON parsing as a recall), with the same
-- query, headers and per-request Lua work as recall.lua (see common.lua).
-- wrk -t2 -c64 -d10s -s benches/http/ceiling.lua http://HOST:PORT -- QUERY MESSAGES PAIRS TIME THREADS
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

common.start("/v4/im_open_login_svc/account_check", function(i, p)
   return string.format('{"CheckItem":[{"UserID":"s%d"}]}', p)
end, false)
