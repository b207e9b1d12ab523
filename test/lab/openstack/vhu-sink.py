#!/usr/bin/python3
"""vhost-user sink: the far end of the lab's unwired Neutron ports.

The lab's ML2 driver (neutron_lab_mech.py) binds ports as vif_type=vhostuser with qemu as
the socket *server*. qemu then blocks at start-up until a vhost-user backend connects, and
does the vhost-user handshake with it. This daemon is that backend, and nothing more: it
connects to every socket in DIR, answers the handshake (features, owner, vring set-up) and
then drops everything. No packet is ever moved, no host interface exists; the guest NIC just
has no link partner. (A real cloud has OVS-DPDK here.) The guests have no OS, so the rings
are never started and shared guest memory is never needed.

Usage: vhu-sink.py DIR    (runs in the foreground; openstack-up.sh starts it as os-vhu-sink)
"""
import array
import os
import selectors
import socket
import struct
import sys
import time

# vhost-user request codes (qemu docs/interop/vhost-user.rst)
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER = 1, 2, 3, 4
GET_VRING_BASE, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM = 11, 15, 17
GET_CONFIG, GET_MAX_MEM_SLOTS = 24, 36
REPLY_FLAGS = 0x1 | 0x4          # version 1 | reply
# VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_NET_F_MRG_RXBUF
FEATURES = (1 << 32) | (1 << 29) | (1 << 28) | (1 << 15)
HDR = struct.Struct("<III")


def log(msg):
    print("%s vhu-sink: %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


class Conn:
    def __init__(self, path, sock):
        self.path, self.sock, self.buf = path, sock, b""
        self.ino = os.stat(path).st_ino

    def handle(self):
        fds = array.array("i")
        data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(64 * fds.itemsize))
        for level, typ, cdata in anc:  # eventfds for vring kick/call: not used, close them
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.frombytes(cdata[:len(cdata) - (len(cdata) % fds.itemsize)])
        for fd in fds:
            os.close(fd)
        if not data:
            return False
        self.buf += data
        while len(self.buf) >= HDR.size:
            req, flags, size = HDR.unpack_from(self.buf)
            if len(self.buf) < HDR.size + size:
                break
            payload = self.buf[HDR.size:HDR.size + size]
            self.buf = self.buf[HDR.size + size:]
            self.reply(req, payload)
        return True

    def reply(self, req, payload):
        if req == GET_FEATURES:
            body = struct.pack("<Q", FEATURES)
        elif req in (GET_PROTOCOL_FEATURES,):
            body = struct.pack("<Q", 0)
        elif req == GET_QUEUE_NUM:
            body = struct.pack("<Q", 1)
        elif req == GET_MAX_MEM_SLOTS:
            body = struct.pack("<Q", 8)
        elif req == GET_VRING_BASE:
            body = payload[:4] + struct.pack("<I", 0)   # {index, num=0}
        elif req == GET_CONFIG:
            body = payload                              # echo: no config space
        else:
            return                                      # SET_*: no reply (no REPLY_ACK)
        self.sock.sendall(HDR.pack(req, REPLY_FLAGS, len(body)) + body)


def main():
    sock_dir = sys.argv[1]
    sel = selectors.DefaultSelector()
    conns = {}      # path -> Conn
    refused = {}    # path -> inode that refused (stale socket file of a dead qemu)
    log("watching %s" % sock_dir)
    while True:
        try:
            names = os.listdir(sock_dir)
        except FileNotFoundError:
            names = []
        for name in names:
            path = os.path.join(sock_dir, name)
            try:
                ino = os.stat(path).st_ino
            except FileNotFoundError:
                continue
            c = conns.get(path)
            if c and c.ino == ino:
                continue
            if refused.get(path) == ino:
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError:
                s.close()
                refused[path] = ino
                continue
            if c:
                sel.unregister(c.sock)
                c.sock.close()
            conns[path] = Conn(path, s)
            refused.pop(path, None)
            sel.register(s, selectors.EVENT_READ, conns[path])
            log("connected %s" % name)
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            try:
                alive = c.handle()
            except OSError:
                alive = False
            if not alive:
                log("closed %s" % os.path.basename(c.path))
                sel.unregister(c.sock)
                c.sock.close()
                conns.pop(c.path, None)   # reconnects if qemu still listens there


if __name__ == "__main__":
    main()
