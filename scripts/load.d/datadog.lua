-- wrk script: distinct Datadog alerts authenticated by X-API-Key (CF_KEY), to tenant CF_TENANT.
-- Every request carries a new alert_id, so every 202 is a new dedup record, queue row and incident.
local n = 0
function init(args)
  id = tostring({}):gsub("table: ", "")
  key = os.getenv("CF_KEY")
  run = os.getenv("RUN_ID") or tostring(os.time())
  path = "/v1/webhooks/" .. (os.getenv("CF_TENANT") or "bench") .. "/datadog"
end
function request()
  n = n + 1
  local body = string.format(
    '{"alert_id":"%s-%s-%d","title":"load test alert %d","text":"wrk","alert_type":"error",' ..
    '"priority":"P3","tags":"service:load,env:bench"}', run, id, n, n)
  return wrk.format("POST", path, {["Content-Type"] = "application/json", ["X-API-Key"] = key}, body)
end
