"""Checks the x-runway-signature the Runway gateway puts on a proxied request.

Usage in an upstream (any framework): verify(secret, headers, method, path_and_query).
Run as a script, it reads a JSON object {"secret", "headers", "method", "path"} on stdin and
prints "ok" or the reason it refuses.
"""
import base64, hashlib, hmac, json, sys, time

def verify(secret: str, headers: dict, method: str, path: str, max_age: int = 300) -> str:
    sig = headers.get("x-runway-signature", "")
    parts = dict(p.split("=", 1) for p in sig.split(",") if "=" in p)
    if "t" not in parts or "v1" not in parts:
        return "no signature"
    if abs(time.time() - int(parts["t"])) > max_age:
        return "too old"
    message = "\n".join([
        "v1", parts["t"], method, path,
        headers.get("x-runway-route", ""), headers.get("x-runway-tenant", ""),
        headers.get("x-runway-subject", ""), headers.get("x-runway-scopes", ""),
    ])
    expected = base64.b64encode(hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()).decode()
    return "ok" if hmac.compare_digest(expected, parts["v1"]) else "bad signature"

if __name__ == "__main__":
    req = json.load(sys.stdin)
    print(verify(req["secret"], req["headers"], req["method"], req["path"]))
