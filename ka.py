import socket, time, json, sys
s = socket.create_connection(("127.0.0.1", 18437), timeout=5)
s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); print(s.recv(500)[:40])
time.sleep(30)
