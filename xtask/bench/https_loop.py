#!/usr/bin/env python3
"""HTTPS request loop for `cargo xtask bench`: the cost of TLS plaintext
capture on an LLM client.

  https_loop.py serve DIR      writes a self-signed certificate for
                               api.openai.com into DIR, serves OpenAI-shaped
                               chat completions on a loopback port, and
                               prints the port once it listens
  https_loop.py client PORT CA N
                               sends N chat completion requests over one
                               keep-alive TLS connection to 127.0.0.1:PORT
                               (SNI api.openai.com) and prints the seconds
                               they took

Only loopback is used.
"""

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "api.openai.com"
REPLY = json.dumps({
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "run_shell", "arguments": "{\"command\": \"ls\"}"},
        }]},
        "finish_reason": "tool_calls",
    }],
    "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body leave in separate writes. Without this, Nagle's
        # algorithm and delayed ACKs add 40 ms to each exchange.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(REPLY)))
        self.end_headers()
        self.wfile.write(REPLY)

    def log_message(self, *args):
        pass


def serve(directory):
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=" + HOST, "-addext", "subjectAltName=DNS:" + HOST,
         "-keyout", key, "-out", cert],
        check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def client(port, ca, count):
    context = ssl.create_default_context(cafile=ca)
    body = json.dumps({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "list the files"}],
        "tools": [{"type": "function", "function": {"name": "run_shell", "parameters": {"type": "object"}}}],
    }).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-not-a-key"}
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection = http.client.HTTPConnection(HOST)
    connection.sock = context.wrap_socket(raw, server_hostname=HOST)
    start = time.perf_counter()
    for _ in range(count):
        connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            sys.exit(f"status {response.status}")
    print(f"{time.perf_counter() - start:.6f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 3:
        serve(sys.argv[2])
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 5:
        client(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(__doc__)
