#!/usr/bin/env python3
"""Log in with AUTH XOAUTH2 after STARTTLS, as Microsoft 365 clients do (harness check).

usage: smtp_xoauth2.py PORT CA_FILE USER TOKEN
Exits 0 and prints the AUTH reply when the login succeeded, 1 (printing the reply) when not.
"""
import base64
import smtplib
import ssl
import sys

port, ca, user, token = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.interop.test", timeout=20)
s.starttls(context=ssl.create_default_context(cafile=ca))
s.ehlo("client.interop.test")
blob = base64.b64encode(("user=%s\x01auth=Bearer %s\x01\x01" % (user, token)).encode()).decode()
code, text = s.docmd("AUTH", "XOAUTH2 " + blob)
if code == 334:  # error details as a base64 JSON challenge: answer with an empty line
    code, text = s.docmd("")
print(code, text.decode(errors="replace"))
s.quit() if code == 235 else s.close()
sys.exit(0 if code == 235 else 1)
