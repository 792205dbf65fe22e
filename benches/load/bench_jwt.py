"""Prints the load benchmark's JWT for Kargo's pipelines: HS256, sub bench-tiles (the consumers
file's jwt credential), signed with the secret given as the only argument."""
import base64
import hashlib
import hmac
import json
import sys


def b64(d):
    return base64.urlsafe_b64encode(d).rstrip(b"=").decode()


head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bench-tiles", "exp": 4102444800}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
