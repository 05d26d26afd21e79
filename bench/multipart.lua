-- wrk script: POST / as multipart/form-data with one file field "images" (a PNG digit).
--
--   wrk -t2 -c64 -d10s --latency --timeout 5s -s bench/multipart.lua http://127.0.0.1:8080/ -- path/to/digit.png
--
-- The image path is the first script argument (after "--"), else $BENCH_IMAGE, else
-- examples/mnist/samples/digit_7.png (relative to the current directory).
-- The request is built once per thread and left static (no request()/response() functions),
-- so wrk stays at full speed. done() prints one machine-readable line for bench/run.py.

local DEFAULT_IMAGE = "examples/mnist/samples/digit_7.png"
local BOUNDARY = "----maservebench4b1f0c2d9e8a7"

local function read_file(path)
   local f, err = io.open(path, "rb")
   if not f then
      error("multipart.lua: cannot read image " .. tostring(path) .. ": " .. tostring(err))
   end
   local data = f:read("*a")
   f:close()
   return data
end

local function basename(path)
   return (string.match(path, "([^/]+)$")) or path
end

function init(args)
   local path = (args and args[1]) or os.getenv("BENCH_IMAGE") or DEFAULT_IMAGE
   local png = read_file(path)
   wrk.method = "POST"
   wrk.path = "/"
   wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY
   wrk.body = "--" .. BOUNDARY .. "\r\n"
      .. 'Content-Disposition: form-data; name="images"; filename="' .. basename(path) .. '"\r\n'
      .. "Content-Type: image/png\r\n"
      .. "\r\n"
      .. png .. "\r\n"
      .. "--" .. BOUNDARY .. "--\r\n"
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, '
      .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
      .. '"lat_mean_us": %.1f, "lat_max_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
