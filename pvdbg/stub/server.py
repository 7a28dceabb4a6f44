"""Socket and stdio loops around the sans-IO framing (rsp.py) and handlers (commands.py).

One gdb at a time. Each connection has a reader thread feeding a queue and one
loop thread that owns the framing and the `Stub`; `target.resume` runs in a worker
thread so the loop keeps reading and turns gdb's 0x03 into `target.request_stop()`.
No host file access is offered (no vFile).
"""

from __future__ import annotations

import ipaddress
import os
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from pvdbg.stub.commands import AfterReply, Replies, ResumeRequest, Stub, error_reply
from pvdbg.stub.rsp import (MAX_PACKET_SIZE, NEED_DATA, DroppedPacket, Interrupt, Packet,
                            RspConnection, RspProtocolError, frame)
from pvdbg.stub.target import StopEvent, Target

READ_CHUNK_BYTES = 0x10000
MAX_QUEUED_CHUNKS = 64
"""Chunks read from gdb but not yet parsed, at most (so at most 4 MiB)."""
RESUME_STOP_TIMEOUT_S = 10.0
"""How long a closing connection waits for a running resume to honour request_stop."""
REFUSE_TIMEOUT_S = 5.0
REFUSE_GRACE_S = 0.2
"""How long a new client waits for the previous one's connection to finish closing."""
INTERRUPT_RETRY_S = 0.05
"""While gdb's ^C waits for a running resume, request_stop is repeated this often: a
request that lands just before the engine starts its run is otherwise lost."""
BUSY_MESSAGE = "pvdbg: another gdb is already attached to this stub"


def _log(stream: TextIO | None, message: str) -> None:
    print(f"pvdbg gdbserver: {message}", file=stream if stream is not None else sys.stderr,
          flush=True)


@dataclass(frozen=True)
class _Data:
    data: bytes


@dataclass(frozen=True)
class _Closed:
    reason: str


@dataclass(frozen=True)
class _Stopped:
    event: StopEvent | None
    error: BaseException | None = None


_Item = _Data | _Closed | _Stopped


class _ClientLoop:
    """One gdb connection. `run` blocks until gdb detaches, kills, drops or `stop()`."""

    def __init__(self, target: Target, read_chunk: Callable[[], bytes],
                 write: Callable[[bytes], None], close: Callable[[], None], *,
                 max_packet_size: int, log: TextIO | None, peer: str) -> None:
        self._target = target
        self._read_chunk = read_chunk
        self._write = write
        self._close = close
        self._log = log
        self._peer = peer
        self._queue: queue.Queue[_Item] = queue.Queue()
        # A gdb that sends without reading our replies blocks us in sendall; the reader
        # then stops reading too (TCP pushes back) instead of queueing without end.
        self._data_slots = threading.Semaphore(MAX_QUEUED_CHUNKS)
        self._conn = RspConnection(max_packet_size)
        self._stub = Stub(target, max_packet_size=max_packet_size)
        self._resuming = False
        self._interrupt_pending = False   # ^C seen, the running resume not stopped yet
        self._finished_by_gdb = False     # D or k: the target already knows gdb left
        self._requests: queue.Queue[ResumeRequest | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.ending = threading.Event()   # set once run() stopped serving gdb

    def stop(self) -> None:
        """Thread-safe: end `run` soon (server shutdown)."""
        self._queue.put(_Closed("server shutting down"))

    def run(self) -> None:
        reader = threading.Thread(target=self._reader, name=f"pvdbg-rsp-read {self._peer}",
                                  daemon=True)
        reader.start()
        try:
            while True:
                item = self._next_item()
                if isinstance(item, _Closed):
                    if not self._finished_by_gdb:
                        _log(self._log, f"{self._peer}: {item.reason}")
                    break
                if isinstance(item, _Stopped):
                    self._resuming = self._interrupt_pending = False
                    self._send(self._stop_replies(item))
                    continue
                self._data_slots.release()
                self._conn.receive_data(item.data)
                if self._drain():
                    break
        except OSError as error:
            _log(self._log, f"{self._peer}: connection lost: {error}")
        finally:
            self._finish()

    def _next_item(self) -> _Item:
        """The next queue item; while a ^C is pending, repeat request_stop meanwhile."""
        while True:
            if not (self._resuming and self._interrupt_pending):
                return self._queue.get()
            try:
                return self._queue.get(timeout=INTERRUPT_RETRY_S)
            except queue.Empty:
                self._target.request_stop()

    def _reader(self) -> None:
        try:
            while True:
                while not self._data_slots.acquire(timeout=INTERRUPT_RETRY_S * 10):
                    if self.ending.is_set():
                        return
                data = self._read_chunk()
                if not data:
                    self._queue.put(_Closed("gdb closed the connection"))
                    return
                self._queue.put(_Data(data))
        except (OSError, ValueError) as error:
            self._queue.put(_Closed(f"connection lost: {error}"))

    def _drain(self) -> bool:
        """Handle every complete event in the buffer; True when the connection must end."""
        while True:
            try:
                event = self._conn.next_event()
            except RspProtocolError as error:
                _log(self._log, f"{self._peer}: protocol error: {error}")
                self._flush_acks()
                continue
            self._flush_acks()
            if event is NEED_DATA:
                return False
            if isinstance(event, Interrupt):
                if self._resuming:
                    self._interrupt_pending = True
                    self._target.request_stop()
            elif isinstance(event, DroppedPacket):
                _log(self._log, f"{self._peer}: dropped packet: {event.reason}")
                self._write(self._conn.send(error_reply(RspProtocolError(event.reason))))
            elif isinstance(event, Packet):
                if self._handle_packet(event.payload):
                    return True

    def _handle_packet(self, payload: bytes) -> bool:
        if self._resuming:
            _log(self._log, f"{self._peer}: packet {payload[:32]!r} while the guest runs")
            self._write(self._conn.send(error_reply(RspProtocolError("target is running"))))
            return False
        outcome = self._stub.handle(payload)
        if isinstance(outcome, ResumeRequest):
            self._resuming = True
            if self._worker is None:       # one long-lived worker: a thread per resume
                self._worker = threading.Thread(target=self._resume_worker,  # costs ~160 us
                                                name="pvdbg-resume", daemon=True)
                self._worker.start()
            self._requests.put(outcome)
            return False
        self._send(outcome)
        if outcome.after is AfterReply.START_NO_ACK:
            self._conn.start_no_ack_mode()
        if outcome.after is AfterReply.CLOSE:
            self._finished_by_gdb = True
            return True
        return False

    def _resume_worker(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            self._resume(request)

    def _resume(self, request: ResumeRequest) -> None:
        try:
            self._queue.put(_Stopped(self._target.resume(request.actions)))
        except BaseException as error:  # reported to gdb by the loop thread
            self._queue.put(_Stopped(None, error))

    def _stop_replies(self, stopped: _Stopped) -> Replies:
        if stopped.event is None:
            return self._stub.resume_failed(stopped.error or RuntimeError("resume failed"))
        return self._stub.stop_replies(stopped.event)

    def _flush_acks(self) -> None:
        pending = self._conn.data_to_send()
        if pending:
            self._write(pending)

    def _send(self, replies: Replies) -> None:
        for payload in replies.payloads:
            self._write(self._conn.send(payload))

    def _finish(self) -> None:
        self.ending.set()
        self._requests.put(None)
        if self._resuming:
            deadline = time.monotonic() + RESUME_STOP_TIMEOUT_S
            while self._resuming and time.monotonic() < deadline:
                self._target.request_stop()
                try:
                    item = self._queue.get(timeout=INTERRUPT_RETRY_S)
                except queue.Empty:
                    continue
                if isinstance(item, _Stopped):
                    self._resuming = False
            if self._resuming:
                _log(self._log, "target did not stop after request_stop; leaving it running")
        if not self._finished_by_gdb and not self._resuming:
            try:
                self._target.detach()
            except Exception as error:
                _log(self._log, f"target.detach failed: {error}")
        try:
            self._close()
        except OSError:
            pass


def _socket_close(sock: socket.socket) -> Callable[[], None]:
    def close() -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
    return close


class GdbServer:
    """TCP gdb stub for one target, one client at a time.

    Port 0 picks a free port (see `.port`). A second concurrent client gets an
    `E.` reply and is closed; after a detach or a dropped connection the next
    client is accepted.
    """

    def __init__(self, target: Target, host: str = "127.0.0.1", port: int = 1234, *,
                 max_packet_size: int = MAX_PACKET_SIZE, log: TextIO | None = None) -> None:
        self._target = target
        self._max_packet_size = max_packet_size
        self._log = log
        family = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0,
                                    socket.AI_PASSIVE)[0][0]
        self._listener = socket.create_server((host, port), family=family)
        address = self._listener.getsockname()
        self.host: str = address[0]
        self.port: int = address[1]
        if not ipaddress.ip_address(self.host.split("%")[0]).is_loopback:
            _log(log, f"WARNING: listening on {self.host}:{self.port}, reachable beyond this "
                      "machine; anyone who connects controls the guest. Prefer 127.0.0.1.")
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        self._lock = threading.Lock()
        self._closing = False
        self._client: _ClientLoop | None = None
        self._client_thread: threading.Thread | None = None
        self._serve_thread: threading.Thread | None = None

    def __enter__(self) -> GdbServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def start(self) -> threading.Thread:
        """Run `serve_forever` in a background thread."""
        thread = threading.Thread(target=self.serve_forever, name="pvdbg-gdbserver",
                                  daemon=True)
        self._serve_thread = thread
        thread.start()
        return thread

    def serve_forever(self) -> None:
        """Accept gdb connections until `shutdown`."""
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wakeup_read, selectors.EVENT_READ)
        try:
            while not self._closing:
                for key, _ in selector.select():
                    if key.fileobj is self._listener and not self._closing:
                        try:
                            sock, address = self._listener.accept()
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        except OSError:
                            continue
                        self._on_connect(sock, f"{address[0]}:{address[1]}")
        finally:
            selector.close()

    def shutdown(self) -> None:
        """Thread-safe: stop accepting, end the current connection (stopping a running
        resume and detaching), close the listener."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            client, client_thread = self._client, self._client_thread
        try:
            self._wakeup_write.send(b"x")
        except OSError:
            pass
        if self._serve_thread is not None and self._serve_thread is not threading.current_thread():
            self._serve_thread.join()
        if client is not None and client_thread is not None:
            client.stop()
            if client_thread is not threading.current_thread():
                client_thread.join()
        self._listener.close()
        self._wakeup_read.close()
        self._wakeup_write.close()

    def _on_connect(self, sock: socket.socket, peer: str) -> None:
        with self._lock:
            if self._closing:
                _socket_close(sock)()
                return
            previous, previous_thread = self._client, self._client_thread
            if previous is not None and previous_thread is not None and previous_thread.is_alive():
                # A gdb that just detached or dropped may still be winding down: give it
                # a moment before calling the newcomer a second client.
                if previous.ending.wait(REFUSE_GRACE_S):
                    previous_thread.join(RESUME_STOP_TIMEOUT_S)
            busy = previous_thread is not None and previous_thread.is_alive()
            if not busy:
                client = _ClientLoop(self._target, lambda: sock.recv(READ_CHUNK_BYTES),
                                     sock.sendall, _socket_close(sock),
                                     max_packet_size=self._max_packet_size, log=self._log,
                                     peer=peer)
                thread = threading.Thread(target=client.run, name=f"pvdbg-rsp {peer}",
                                          daemon=True)
                self._client, self._client_thread = client, thread
                _log(self._log, f"gdb connected from {peer}")
                thread.start()
        if busy:
            _log(self._log, f"refused {peer}: another gdb is attached")
            threading.Thread(target=_refuse, args=(sock,), name=f"pvdbg-refuse {peer}",
                             daemon=True).start()


def _refuse(sock: socket.socket) -> None:
    """Read gdb's first packet (so gdb sees an answer to it), reply `E.<why>`, close."""
    conn = RspConnection()
    try:
        sock.settimeout(REFUSE_TIMEOUT_S)
        answered = False
        while not answered:
            data = sock.recv(READ_CHUNK_BYTES)
            if not data:
                break
            conn.receive_data(data)
            while True:
                try:
                    event = conn.next_event()
                except RspProtocolError:
                    continue
                if event is NEED_DATA:
                    break
                if isinstance(event, Packet):
                    sock.sendall(conn.data_to_send() + frame(b"E." + BUSY_MESSAGE.encode()))
                    answered = True
                    break
    except OSError:
        pass
    _socket_close(sock)()


def serve_stdio(target: Target, rfile: BinaryIO, wfile: BinaryIO, *,
                max_packet_size: int = MAX_PACKET_SIZE, log: TextIO | None = None) -> None:
    """Serve one gdb over a pipe pair (`target remote | pvdbg ... --stdio`); returns
    when gdb detaches, kills or closes the pipe. Diagnostics go to `log` (stderr)."""
    try:
        descriptor = rfile.fileno()
    except (AttributeError, OSError, ValueError):
        descriptor = -1
    if descriptor >= 0:
        # Raw reads: a reader thread blocked inside a BufferedReader would hold its
        # lock and make interpreter shutdown abort.
        def read_chunk() -> bytes:
            return os.read(descriptor, READ_CHUNK_BYTES)
    else:
        read_some = getattr(rfile, "read1", rfile.read)

        def read_chunk() -> bytes:
            return read_some(READ_CHUNK_BYTES)

    def write(data: bytes) -> None:
        if data:
            wfile.write(data)
            wfile.flush()

    loop = _ClientLoop(target, read_chunk, write, lambda: None,
                       max_packet_size=max_packet_size, log=log, peer="stdio")
    loop.run()
