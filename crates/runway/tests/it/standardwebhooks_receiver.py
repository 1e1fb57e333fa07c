"""A webhook receiver that verifies every delivery with the official Standard Webhooks library.

Usage: standardwebhooks_receiver.py SECRET PORT_FILE LOG_FILE
Writes its port to PORT_FILE, then one line per delivery to LOG_FILE: "ok <webhook-id> <type>"
or "fail <error>".
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook

secret, port_file, log_file = sys.argv[1:4]
wh = Webhook(secret)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = wh.verify(body, headers)
            line = f"ok {headers['webhook-id']} {event['type']}"
            status = 204
        except Exception as e:  # the library raises on any verification failure
            line = f"fail {e!r}"
            status = 400
        with open(log_file, "a") as f:
            f.write(line + "\n")
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
with open(port_file, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
