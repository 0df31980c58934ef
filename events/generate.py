#!/usr/bin/env python3
"""Writes the sample Lambda events in this folder (see README.md here).

API Gateway HTTP API (payload format 2.0) request events for the ingest function, built from the
realistic sender bodies in tests/fixtures/webhooks/, one SQS event for the triage function, and one
SNS event for the sample CloudWatch forwarder (examples/cloudwatch-forwarder). Webhook bodies are
signed with the DEVELOPMENT webhook secret below (local use only).

The output is deterministic: running it again rewrites the same bytes.

    python3 events/generate.py           write the events
    python3 events/generate.py --check   exit 1 if a written event is missing or out of date

Standard library only.
"""

import base64
import hashlib
import hmac
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures" / "webhooks"

# DEVELOPMENT credentials, for local use only (see README.md). Never use them in a deployed stack.
DEV_TENANT = "demo"
DEV_API_KEY = "cf_dev_local_only_0000000000000000000000000000000000"
DEV_WEBHOOK_SECRET = "whsec_dev_local_only_do_not_use_in_production"

# The fictitious API and account the events claim to come from.
REGION = "eu-west-1"
ACCOUNT_ID = "123456789012"
API_ID = "a1b2c3d4e5"
DOMAIN = f"{API_ID}.execute-api.{REGION}.amazonaws.com"
# 2026-11-28T09:41:00Z: the time every request "arrives".
ARRIVED = datetime(2026, 11, 28, 9, 41, 0, tzinfo=timezone.utc)

WEBHOOK_ROUTE = "POST /v1/webhooks/{tenantId}/{provider}"

SNS_HEADERS = {
    "x-amz-sns-message-type": "Notification",
    "x-amz-sns-message-id": "3f6b2c1e-8a47-5d90-b1e2-7c4d9a0f6e15",
    "x-amz-sns-topic-arn": "arn:aws:sns:eu-west-1:482916530417:causeflow-alarms",
    "x-amz-sns-subscription-arn": (
        "arn:aws:sns:eu-west-1:482916530417:causeflow-alarms:7c1e0b52-3f9a-4d7e-9b61-2a8f5c4d1e93"
    ),
}

# (event file, provider, fixture, signed, user agent, source IP, extra headers, content type)
# Source IPs are from the documentation ranges (RFC 5737); user agents are the senders' own.
WEBHOOKS = [
    ("webhook-datadog-triggered.json", "datadog", "datadog/custom-lifecycle-1-triggered.json",
     True, "Datadog/Webhooks", "198.51.100.21", {}, "application/json"),
    ("webhook-datadog-recovered.json", "datadog", "datadog/custom-lifecycle-3-recovered.json",
     True, "Datadog/Webhooks", "198.51.100.21", {}, "application/json"),
    ("webhook-grafana-firing.json", "grafana", "grafana/unified-3-firing.json",
     True, "Grafana/12.1.0", "203.0.113.40", {}, "application/json"),
    ("webhook-grafana-partial-resolve.json", "grafana", "grafana/unified-3-partial-resolved.json",
     True, "Grafana/12.1.0", "203.0.113.40", {}, "application/json"),
    # OnCall outgoing webhooks cannot sign: the API key alone authenticates this payload shape.
    ("webhook-grafana-oncall-escalation.json", "grafana", "grafana/oncall-escalation.json",
     False, "python-requests/2.32.3", "203.0.113.41", {}, "application/json"),
    ("webhook-sentry-issue.json", "sentry", "sentry/issue-created.json",
     True, "sentry-app", "192.0.2.77",
     {"sentry-hook-resource": "issue", "request-id": "4f0b7c2e9a1d4e6b8c3f5a7d9e1b2c40"},
     "application/json"),
    ("webhook-sentry-metric-alert.json", "sentry", "sentry/metric-alert-critical.json",
     True, "sentry-app", "192.0.2.77",
     {"sentry-hook-resource": "metric_alert", "request-id": "e2b9f4a1c7d04e8b96a3c5f1d2e7b083"},
     "application/json"),
    # The SNS envelope as the forwarder posts it: SNS's own headers, plus key and signature.
    ("webhook-cloudwatch-alarm.json", "cloudwatch", "cloudwatch/metric-alarm-alarm.json",
     True, "Amazon Simple Notification Service Agent", "203.0.113.15", SNS_HEADERS,
     "text/plain; charset=UTF-8"),
    # Alertmanager cannot sign: its http_config sends the key as `Authorization: Bearer`.
    ("webhook-alertmanager-firing.json", "alertmanager", "alertmanager/group-2-firing.json",
     False, "Alertmanager/0.25.0", "198.51.100.60", {}, "application/json"),
    ("webhook-alertmanager-partial-resolve.json", "alertmanager",
     "alertmanager/group-1-resolved-1-firing.json",
     False, "Alertmanager/0.25.0", "198.51.100.60", {}, "application/json"),
    # PagerDuty Events v2 senders put the key in the body's routing_key and send no header.
    ("webhook-pagerduty-trigger.json", "pagerduty", "pagerduty/trigger.json",
     False, "Checkly/1.0", "192.0.2.90", {}, "application/json"),
    ("webhook-pagerduty-acknowledge.json", "pagerduty", "pagerduty/acknowledge.json",
     False, "Checkly/1.0", "192.0.2.90", {}, "application/json"),
    ("webhook-pagerduty-resolve.json", "pagerduty", "pagerduty/resolve.json",
     False, "Checkly/1.0", "192.0.2.90", {}, "application/json"),
    ("webhook-generic-firing.json", "generic", "generic/firing-critical.json",
     True, "curl/8.5.0", "192.0.2.10", {}, "application/json"),
    ("webhook-generic-resolved.json", "generic", "generic/resolved.json",
     True, "curl/8.5.0", "192.0.2.10", {}, "application/json"),
]


def sign(body: bytes) -> str:
    """The X-Webhook-Signature value: lower-case hex HMAC-SHA256 of the exact body bytes."""
    return hmac.new(DEV_WEBHOOK_SECRET.encode("utf-8"), body, hashlib.sha256).hexdigest()


def request_id(name: str) -> str:
    """A stable API Gateway style request id (base64 of 11 bytes), one per event."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()[:11]
    return base64.b64encode(digest).decode("ascii")


def trace_id(name: str) -> str:
    digest = hashlib.sha256(b"trace:" + name.encode("utf-8")).hexdigest()
    return f"Root=1-{int(ARRIVED.timestamp()):08x}-{digest[:24]}"


def http_event(name, method, route_key, path, *, query=None, path_params=None, headers,
               source_ip, user_agent, body=None):
    """One API Gateway HTTP API (payload format 2.0) request event."""
    raw_query = "&".join(f"{k}={v}" for k, v in (query or {}).items())
    all_headers = {
        "host": DOMAIN,
        "user-agent": user_agent,
        "x-amzn-trace-id": trace_id(name),
        "x-forwarded-for": source_ip,
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    all_headers.update(headers)
    event = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": dict(sorted(all_headers.items())),
    }
    if query:
        event["queryStringParameters"] = dict(query)
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": DOMAIN,
        "domainPrefix": API_ID,
        "http": {
            "method": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": user_agent,
        },
        "requestId": request_id(name),
        "routeKey": route_key,
        "stage": "$default",
        "time": ARRIVED.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(ARRIVED.timestamp() * 1000),
    }
    if path_params:
        event["pathParameters"] = dict(path_params)
    if body is not None:
        event["body"] = body
    event["isBase64Encoded"] = False
    return event


def webhook_event(name, provider, fixture, signed, user_agent, source_ip, extra, content_type):
    raw = (FIXTURES / fixture).read_bytes()
    body = raw.decode("utf-8")  # the exact fixture text, byte for byte
    headers = {
        "accept-encoding": "gzip",
        "content-length": str(len(raw)),
        "content-type": content_type,
        "x-api-key": DEV_API_KEY,
    }
    if provider == "alertmanager":
        del headers["x-api-key"]
        headers["authorization"] = f"Bearer {DEV_API_KEY}"
    elif provider == "pagerduty":
        del headers["x-api-key"]  # the body's routing_key is the key
    if signed:
        headers["x-webhook-signature"] = sign(raw)
    headers.update(extra)
    path = f"/v1/webhooks/{DEV_TENANT}/{provider}"
    return http_event(
        name, "POST", WEBHOOK_ROUTE, path,
        path_params={"tenantId": DEV_TENANT, "provider": provider},
        headers=headers, source_ip=source_ip, user_agent=user_agent, body=body,
    )


def get_events():
    yield "get-incidents.json", http_event(
        "get-incidents.json", "GET", "GET /v1/tenants/{tenantId}/incidents",
        f"/v1/tenants/{DEV_TENANT}/incidents",
        query={"status": "open"},
        path_params={"tenantId": DEV_TENANT},
        headers={"accept": "application/json", "x-api-key": DEV_API_KEY},
        source_ip="192.0.2.10", user_agent="curl/8.5.0",
    )
    yield "healthz.json", http_event(
        "healthz.json", "GET", "GET /healthz", "/healthz",
        headers={"accept": "*/*"},
        source_ip="192.0.2.10", user_agent="curl/8.5.0",
    )


def queued_alert_bodies():
    grafana = {
        "tenantId": DEV_TENANT,
        "provider": "grafana",
        "incidentId": "inc_019a7c2e5b7d7c3f9e1b2a3c4d5e6f70",
        "alert": {
            "sourceAlertId": "a1b2c3d4e5f60718",
            "status": "firing",
            "title": "CheckoutHighErrorRate: 5xx ratio above 5% on checkout",
            "message": "5xx ratio is 7.4% over the last 5 minutes (threshold 5%).",
            "severity": "critical",
            "service": "checkout",
            "environment": "production",
            "tags": {
                "alertname": "CheckoutHighErrorRate",
                "env": "production",
                "service": "checkout",
                "severity": "critical",
            },
            "links": [
                "https://grafana.example.com/alerting/grafana/cdq4k1xy2z5s0a/view",
                "https://grafana.example.com/d/checkout-overview?orgId=1",
            ],
        },
        "receivedAt": "2026-11-28T09:41:00.000Z",
    }
    generic = {
        "tenantId": DEV_TENANT,
        "provider": "generic",
        "incidentId": "inc_019a7c2e5c1f7a48b3d2e6f1a0c9b874",
        "alert": {
            "sourceAlertId": "orders-api/db-pool/eu-west-1",
            "status": "firing",
            "title": "Orders API database connection pool saturated",
            "message": "98 of 100 connections in use for 10 minutes; p99 acquire time 2.4 s.",
            "severity": "high",
            "service": "orders-api",
            "environment": "production",
            "tags": {"team": "orders", "region": "eu-west-1"},
            "links": ["https://runbooks.example.com/orders-api/db-pool"],
        },
        "receivedAt": "2026-11-28T09:41:02.318Z",
    }
    # Compact, as the ingest function serialises them onto the queue.
    for alert in (grafana, generic):
        yield json.dumps(alert, ensure_ascii=False, separators=(",", ":"))
    # A message triage cannot parse: it must fail on its own (batch item failure) and, after
    # 5 receives, land in the dead-letter queue, without failing the other records.
    yield '{"not":"a queued alert"}'


def sqs_event():
    queue_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:causeflow-ingest-AlertQueue"
    sender = "AROAEXAMPLEROLEID0001:causeflow-ingest-IngestFunction-Q1w2E3r4T5y6"
    records = []
    for i, body in enumerate(queued_alert_bodies()):
        seed = hashlib.sha256(f"sqs-record-{i}".encode()).hexdigest()
        message_id = f"{seed[:8]}-{seed[8:12]}-4{seed[13:16]}-a{seed[17:20]}-{seed[20:32]}"
        receipt = base64.b64encode(hashlib.sha512(seed.encode()).digest() * 2).decode("ascii")
        sent = int(ARRIVED.timestamp() * 1000) + 25 + i * 1150
        records.append({
            "messageId": message_id,
            "receiptHandle": "AQEB" + receipt,
            "body": body,
            "attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": str(sent),
                "SenderId": sender,
                "ApproximateFirstReceiveTimestamp": str(sent + 40),
            },
            "messageAttributes": {},
            "md5OfBody": hashlib.md5(body.encode("utf-8")).hexdigest(),
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": REGION,
        })
    return {"Records": records}


# The sample forwarder's own subscription to the alarm topic (protocol lambda), distinct from the
# HTTPS subscription in SNS_HEADERS.
FORWARDER_SUBSCRIPTION_ID = "e4a19c07-52d3-4b8f-a6e1-0d93c7f28b56"

# The alarm's two notifications, in the order SNS delivered them.
FORWARDER_FIXTURES = ["cloudwatch/metric-alarm-alarm.json", "cloudwatch/metric-alarm-ok.json"]


def sns_record(envelope):
    """One record of a Lambda SNS event, for the notification SNS posted over HTTPS as `envelope`.

    Lambda's SNS event carries the same signed fields, spelled `SigningCertUrl` and
    `UnsubscribeUrl`, plus `MessageAttributes`; the unsubscribe link names the Lambda subscription.
    """
    topic = envelope["TopicArn"]
    subscription = f"{topic}:{FORWARDER_SUBSCRIPTION_ID}"
    region = topic.split(":")[3]
    return {
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": subscription,
        "Sns": {
            "Type": envelope["Type"],
            "MessageId": envelope["MessageId"],
            "TopicArn": topic,
            "Subject": envelope["Subject"],
            "Message": envelope["Message"],
            "Timestamp": envelope["Timestamp"],
            "SignatureVersion": envelope["SignatureVersion"],
            "Signature": envelope["Signature"],
            "SigningCertUrl": envelope["SigningCertURL"],
            "UnsubscribeUrl": (
                f"https://sns.{region}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={subscription}"
            ),
            "MessageAttributes": {},
        },
    }


def sns_forwarder_event():
    """The Lambda SNS event the sample forwarder receives: the ALARM, then the OK of one alarm."""
    records = []
    for fixture in FORWARDER_FIXTURES:
        envelope = json.loads((FIXTURES / fixture).read_text(encoding="utf-8"))
        if envelope.get("Type") != "Notification" or "Subject" not in envelope:
            raise SystemExit(f"{fixture}: expected an SNS Notification with a Subject")
        records.append(sns_record(envelope))
    return {"Records": records}


def all_events():
    for spec in WEBHOOKS:
        yield spec[0], webhook_event(*spec)
    yield from get_events()
    yield "sqs-triage.json", sqs_event()
    yield "sns-forwarder-alarm.json", sns_forwarder_event()


def render(event) -> str:
    return json.dumps(event, indent=2, ensure_ascii=False) + "\n"


def main(argv):
    check = "--check" in argv[1:]
    stale = []
    for name, event in all_events():
        text = render(event)
        path = HERE / name
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python3 events/generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
