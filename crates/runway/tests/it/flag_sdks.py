"""Evaluates flags through two real SDKs against a running Runway and prints what they said.

Usage: flag_sdks.py BASE_URL TOKEN CASES_JSON
CASES_JSON: {"flags": [{"key", "kind": "boolean"|"variant"}], "contexts": [{"userId", "properties": {}}]}
Prints {"ofrep": [...], "unleash": [...]}, one entry per (flag, context) in order.
"""
import json
import sys
import tempfile

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from UnleashClient import UnleashClient

base, token, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

api.set_provider(OFREPProvider(base, headers_factory=lambda: {"Authorization": f"Bearer {token}"}))
of = api.get_client()
unleash = UnleashClient(
    url=f"{base}/api",
    app_name="runway-interop-test",
    instance_id="it",
    custom_headers={"Authorization": token},
    refresh_interval=60,
    disable_metrics=False,
    metrics_interval=60,
    request_timeout=5,
    cache_directory=tempfile.mkdtemp(),
)
unleash.initialize_client()

ofrep_out, unleash_out = [], []
for flag in cases["flags"]:
    for ctx in cases["contexts"]:
        oc = EvaluationContext(targeting_key=ctx["userId"], attributes=ctx.get("properties", {}))
        if flag["kind"] == "boolean":
            d = of.get_boolean_details(flag["key"], False, oc)
        else:
            d = of.get_object_details(flag["key"], {}, oc)
        ofrep_out.append({"value": d.value, "variant": d.variant, "reason": str(d.reason),
                          "error": str(d.error_code) if d.error_code else None})
        uc = {"userId": ctx["userId"], "properties": ctx.get("properties", {})}
        v = unleash.get_variant(flag["key"], uc)
        unleash_out.append({"enabled": unleash.is_enabled(flag["key"], uc), "variant": v["name"],
                            "payload": v.get("payload")})
unleash.destroy()
print(json.dumps({"ofrep": ofrep_out, "unleash": unleash_out}))
