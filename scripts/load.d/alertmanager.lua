-- wrk script: distinct alerts to Prometheus Alertmanager's POST /api/v2/alerts (one per request).
local n = 0
function init(args)
  id = tostring({}):gsub("table: ", "")
  run = os.getenv("RUN_ID") or tostring(os.time())
end
function request()
  n = n + 1
  local body = string.format(
    '[{"labels":{"alertname":"load","instance":"%s-%s-%d","severity":"error","service":"load"},' ..
    '"annotations":{"summary":"load test alert %d"}}]', run, id, n, n)
  return wrk.format("POST", "/api/v2/alerts", {["Content-Type"] = "application/json"}, body)
end
