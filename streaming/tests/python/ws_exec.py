"""An independent WebSocket remotecommand client (PyPI websocket-client).

Usage: ws_exec.py URL PROTOCOL [STDIN_TEXT]
Prints one JSON object: negotiated subprotocol, stdout, stderr, status.
"""

import base64
import json
import sys

import websocket


def main():
    url, protocol = sys.argv[1], sys.argv[2]
    stdin = sys.argv[3] if len(sys.argv) > 3 else None
    ws = websocket.create_connection(
        url.replace("http://", "ws://", 1), subprotocols=[protocol], timeout=30
    )
    b64 = "base64" in protocol

    def send(channel, data):
        if b64:
            ws.send(chr(ord("0") + channel) + base64.b64encode(data).decode())
        else:
            ws.send_binary(bytes([channel]) + data)

    if stdin is not None:
        send(0, stdin.encode())
        if protocol.startswith("v5."):
            ws.send_binary(bytes([255, 0]))
    out = {1: b"", 2: b"", 3: b""}
    while True:
        opcode, data = ws.recv_data(control_frame=False)
        if opcode == websocket.ABNF.OPCODE_CLOSE or (not data and opcode != websocket.ABNF.OPCODE_BINARY and opcode != websocket.ABNF.OPCODE_TEXT):
            break
        if not data:
            continue
        if b64:
            channel, payload = data[0] - ord("0"), base64.b64decode(data[1:])
        else:
            channel, payload = data[0], data[1:]
        if channel in out:
            out[channel] += payload
    print(
        json.dumps(
            {
                "negotiated": ws.getsubprotocol(),
                "stdout": out[1].decode(),
                "stderr": out[2].decode(),
                "status": out[3].decode(),
            }
        )
    )


if __name__ == "__main__":
    main()
