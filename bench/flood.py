#!/usr/bin/env python3
"""Holds N connections open against a hub from another loopback address, as a slowloris and
idle-connection attacker would: half send nothing, half send a request header one byte at a
time, and every connection the hub closes is opened again at once. Runs until killed; prints
how many connections the hub closed every 5 seconds.

    bench/flood.py PORT N [SOURCE_ADDRESS]
"""
import selectors
import socket
import sys
import time

PORT, N = int(sys.argv[1]), int(sys.argv[2])
SOURCE = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.2"
HEADER = b"POST /ds HTTP/1.1\r\nHost: hub\r\nContent-Length: 10\r\nX-Slow: " + b"a" * 4000

sel = selectors.DefaultSelector()
closed = 0


def connect(kind):
    s = socket.socket()
    s.bind((SOURCE, 0))
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", PORT))
    except BlockingIOError:
        pass
    sel.register(s, selectors.EVENT_READ, [kind, 0])


for i in range(N):
    connect("slow" if i % 2 else "idle")
last_drip = last_report = time.time()
while True:
    for key, _ in sel.select(timeout=0.2):
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b""
        if not data:  # closed by the hub (or refused): come back at once
            closed += 1
            kind = key.data[0]
            sel.unregister(key.fileobj)
            key.fileobj.close()
            connect(kind)
    now = time.time()
    if now - last_drip >= 1.0:  # one more header byte a second on the slow ones
        last_drip = now
        for key in list(sel.get_map().values()):
            kind, sent = key.data
            if kind == "slow" and sent < len(HEADER):
                try:
                    key.fileobj.send(HEADER[sent:sent + 1])
                    key.data[1] = sent + 1
                except OSError:
                    pass
    if now - last_report >= 5.0:
        last_report = now
        print(f"flood: {len(sel.get_map())} open, {closed} closed by the hub so far", flush=True)
