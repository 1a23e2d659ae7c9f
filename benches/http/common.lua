-- Shared by recall.lua and ceiling.lua (loaded with dofile by each, in every wrk Lua state).
--
-- wrk arguments after `--`: QUERY MESSAGES PAIRS TIME THREADS
--   QUERY     sdkappid=...&identifier=administrator&usersig=...&random=1&contenttype=json
--   MESSAGES  messages seeded by examples/http_seed.rs (message i: s{i%PAIRS} -> r{i%PAIRS},
--             MsgKey "{i}_{i}_{TIME}")
--   PAIRS, TIME as given to http_seed; THREADS: wrk's -t.
--
-- Each request is built from a counter: thread k of T makes items k, k+T, k+2T, ... so threads
-- never share an item. Every answer is checked: HTTP 200 with "ErrorCode":0; anything else
-- counts as an error, reported by done().

local common = {}

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- `body_of(i, p)` is the JSON body for item i (pair p = i % PAIRS); `keyed`: item i is seeded
-- message i, which exists only for i < MESSAGES (items beyond are counted).
function common.start(path, body_of, keyed)
   function init(args)
      query, messages, pairs_n, time, stride =
         args[1], tonumber(args[2]), tonumber(args[3]), args[4], tonumber(args[5])
      assert(query and messages and pairs_n and time and stride, "arguments: QUERY MESSAGES PAIRS TIME THREADS")
      url_path = path .. "?" .. query
      headers = { ["Content-Type"] = "application/json" }
      item = id
      answers, errors, beyond, first_error = 0, 0, 0, ""
   end

   function request()
      local i = item
      item = item + stride
      if keyed and i >= messages then
         beyond = beyond + 1
      end
      return wrk.format("POST", url_path, headers, body_of(i, i % pairs_n))
   end

   function response(status, headers, body)
      answers = answers + 1
      if status ~= 200 or not string.find(body, '"ErrorCode":0[,}]') then
         errors = errors + 1
         if first_error == "" then
            first_error = status .. " " .. body
         end
      end
   end

   function done(summary, latency, requests)
      local answered, failed, beyond_all, first = 0, 0, 0, ""
      for _, t in ipairs(threads) do
         answered = answered + t:get("answers")
         failed = failed + t:get("errors")
         beyond_all = beyond_all + t:get("beyond")
         if first == "" then
            first = t:get("first_error")
         end
      end
      local e = summary.errors
      local seconds = summary.duration / 1e6
      io.write(string.format(
         "RESULT path=%s requests=%d seconds=%.3f rps=%.0f answers=%d error_answers=%d beyond_seeded=%d socket_errors=%d p50_us=%d p99_us=%d\n",
         path, summary.requests, seconds, summary.requests / seconds, answered, failed, beyond_all,
         e.connect + e.read + e.write + e.status + e.timeout,
         latency:percentile(50), latency:percentile(99)))
      if first ~= "" then
         io.write("first error answer: " .. first .. "\n")
      end
   end
end

return common
