#!/usr/bin/env python3
"""Check a message m365send composed (--subject, body from stdin, --attach) as delivered.

usage: check_composed.py DELIVERED.eml BODY_FILE ATTACHMENT SUBJECT FROM_ADDRESS
Prints "ok", or the problems found on one line.
"""
import email
import email.policy
import os
import sys


def main():
    eml, body_file, att_file, subject, sender = sys.argv[1:6]
    with open(eml, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    with open(body_file, encoding="utf-8") as f:
        body = f.read()
    with open(att_file, "rb") as f:
        att = f.read()
    problems = []
    if msg["Subject"] != subject:
        problems.append("Subject %r" % msg["Subject"])
    if sender not in str(msg["From"]):
        problems.append("From %r" % msg["From"])
    if not msg["Date"] or not msg["Message-ID"]:
        problems.append("no Date or Message-ID")
    text = msg.get_body(("plain",))
    if text is None:
        problems.append("no text/plain part")
    elif text.get_content().replace("\r\n", "\n").rstrip("\n") != body.rstrip("\n"):
        problems.append("text part differs: %r" % text.get_content()[:80])
    files = [p for p in msg.iter_attachments() if p.get_filename()]
    if len(files) != 1:
        problems.append("%d attachments" % len(files))
    elif files[0].get_filename() != os.path.basename(att_file):
        problems.append("attachment name %r" % files[0].get_filename())
    elif files[0].get_content() != att:
        problems.append("attachment bytes differ")
    print("; ".join(problems) or "ok")


if __name__ == "__main__":
    main()
