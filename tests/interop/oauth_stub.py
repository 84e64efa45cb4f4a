#!/usr/bin/env python3
"""OAuth2 token introspection for the interop suite's Dovecot (RFC 7662, POST token=...).

usage: oauth_stub.py PORT TOKEN_FILE USERNAME
Listens on 127.0.0.1:PORT. A token equal to TOKEN_FILE's contents is active for USERNAME;
any other token is inactive. Dovecot's oauth2 passdb asks it for every XOAUTH2/OAUTHBEARER
login, so the token m365send sends is checked by a real, independent SASL implementation.
"""
import http.server
import json
import sys
import urllib.parse

PORT, TOKEN_FILE, USERNAME = int(sys.argv[1]), sys.argv[2], sys.argv[3]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        token = (form.get("token") or [""])[0]
        with open(TOKEN_FILE) as f:
            good = f.read().strip()
        body = {"active": True, "username": USERNAME} if token == good else {"active": False}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stderr.write("oauth_stub: " + (fmt % args) + "\n")


http.server.HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
