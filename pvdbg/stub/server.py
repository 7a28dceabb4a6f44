"""Socket and stdio loops around the sans-IO framing (rsp.py) and handlers (commands.py).

One gdb at a time. Each connection has one loop thread that reads gdb's bytes, owns
the framing and the `Stub` and answers every packet itself (a thread handoff per
packet would cost more than most handlers). Single steps run right there. A resume
that may run long runs there too when the target allows it (`inline_resumes`) and the
connection is a socket, with a watch thread turning gdb's 0x03 into
`target.request_stop()`; otherwise it goes to a worker thread (which sends its stop
reply) while the loop keeps reading. A gdb that stops reading our replies blocks the
loop in its write, so we stop reading too and TCP pushes back. No host file access is
offered (no vFile).
"""

from __future__ import annotations

import ipaddress
import os
import queue
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import BinaryIO, TextIO

from pvdbg.stub.commands import AfterReply, ResumeRequest, Stub, error_reply
from pvdbg.stub.nonstop import NonStop
from pvdbg.stub.rsp import (MAX_PACKET_SIZE, NEED_DATA, DroppedPacket, Interrupt, Packet,
                            RspConnection, RspProtocolError, frame)
from pvdbg.stub.target import Target

READ_CHUNK_BYTES = 0x10000
RESUME_STOP_TIMEOUT_S = 10.0
"""How long a closing connection waits for a running resume to honour request_stop."""
REFUSE_TIMEOUT_S = 5.0
REFUSE_GRACE_S = 0.2
"""How long a new client waits for the previous one's connection to finish closing."""
INTERRUPT_RETRY_S = 0.05
"""While gdb's ^C waits for a running resume, request_stop is repeated this often: a
request that lands just before the engine starts its run is otherwise lost."""
BUSY_MESSAGE = "pvdbg: another gdb is already attached to this stub"
READ_SPIN_S = 200e-6
"""How long a socket read polls (non-blocking) before it sleeps in recv: gdb's next
packet usually follows our reply within tens of microseconds, and a thread that is
still running takes it at once, where waking a sleeping one costs 50-80 us on a
virtual machine."""


def _log(stream: TextIO | None, message: str) -> None:
    print(f"pvdbg gdbserver: {message}", file=stream if stream is not None else sys.stderr,
          flush=True)


class _InterruptWatch:
    """While the loop thread runs a resume itself, this thread waits for gdb's bytes
    (epoll, edge-triggered; the descriptor is registered only during such a run) and
    turns a 0x03 among them, or the connection closing, into `target.request_stop()`,
    repeated until the run ends (a request that lands just before the engine starts
    its run is otherwise lost). It reads nothing: `peek` looks at what is queued."""

    def __init__(self, descriptor: int, peek: Callable[[], bytes], target: Target) -> None:
        self._descriptor = descriptor
        self._peek = peek
        self._target = target
        self._epoll = select.epoll()
        self._wakeup_read, self._wakeup_write = os.pipe()
        self._epoll.register(self._wakeup_read, select.EPOLLIN)
        self._running = False
        self._run_over = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="pvdbg-interrupt-watch",
                                        daemon=True)
        self._thread.start()

    def begin(self) -> None:
        self._run_over.clear()
        self._running = True
        self._epoll.register(self._descriptor, select.EPOLLIN | select.EPOLLET)

    def end(self) -> None:
        self._running = False
        self._run_over.set()
        self._epoll.unregister(self._descriptor)

    def close(self) -> None:
        self._closed = True
        self._run_over.set()
        os.write(self._wakeup_write, b"x")
        self._thread.join()
        self._epoll.close()
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)

    def _watch(self) -> None:
        while not self._closed:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            if self._closed:
                return
            if not self._running or not any(fd == self._descriptor for fd, _ in events):
                continue
            try:
                queued = self._peek()
            except BlockingIOError:
                continue
            except OSError:
                queued = b""
            if b"\x03" in queued or not queued:       # ^C, or gdb went away
                self._target.request_stop()
                while not self._run_over.wait(INTERRUPT_RETRY_S):
                    self._target.request_stop()


class _ClientLoop:
    """One gdb connection. `run` blocks until gdb detaches, kills, drops or `stop()`.

    The calling thread reads gdb's bytes itself and answers each packet at once.
    Single steps run in it. A resume that may run long (`c`, range steps, a step of a
    blocked vcpu) runs in it too when the target allows (`inline_resumes`), `peek` is
    given and no bytes wait behind the resume packet, with an _InterruptWatch thread
    looking out for ^C; otherwise it goes to one long-lived worker thread, which sends
    the stop reply itself while the reading thread keeps serving gdb's 0x03."""

    def __init__(self, target: Target, read_chunk: Callable[[], bytes],
                 write: Callable[[bytes], None], close: Callable[[], None], *,
                 max_packet_size: int, log: TextIO | None, peer: str,
                 wake_reader: Callable[[], None] = lambda: None,
                 peek: tuple[int, Callable[[], bytes]] | None = None) -> None:
        self._target = target
        self._read_chunk = read_chunk
        self._raw_write = write
        self._close = close
        self._wake_reader = wake_reader
        self._log = log
        self._peer = peer
        self._write_lock = threading.Lock()   # the worker's stop replies vs the loop's
        self._conn = RspConnection(max_packet_size)
        self._stub = Stub(target, max_packet_size=max_packet_size)
        self._nonstop = NonStop(self._stub)   # gdb's non-stop protocol, once QNonStop:1
        self._resuming = False                # a resume runs in the worker
        self._resume_done = threading.Event() # set by the worker when it stopped
        self._finished_by_gdb = False         # D or k: the target already knows gdb left
        self._stopping = False                # stop() called: the server shuts down
        self._requests: queue.Queue[ResumeRequest | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._peek = peek                     # (descriptor, peek) for _InterruptWatch
        self._watch: _InterruptWatch | None = None
        self.ending = threading.Event()       # set once run() stopped serving gdb

    def stop(self) -> None:
        """Thread-safe: end `run` soon (server shutdown)."""
        self._stopping = True
        self._wake_reader()

    def run(self) -> None:
        try:
            while True:
                data = b"" if self._stopping else self._read_chunk()
                if not data:
                    if not self._finished_by_gdb:
                        _log(self._log, f"{self._peer}: " + (
                            "server shutting down" if self._stopping
                            else "gdb closed the connection"))
                    break
                self._conn.receive_data(data)
                if self._drain():
                    break
        except (OSError, ValueError) as error:
            if not self._stopping:
                _log(self._log, f"{self._peer}: connection lost: {error}")
            else:
                _log(self._log, f"{self._peer}: server shutting down")
        finally:
            self._finish()

    def _write(self, data: bytes) -> None:
        if data:
            with self._write_lock:
                self._raw_write(data)

    def _drain(self) -> bool:
        """Handle every complete event in the buffer; True when the connection must end."""
        conn = self._conn
        while True:
            try:
                event = conn.next_event()
            except RspProtocolError as error:
                _log(self._log, f"{self._peer}: protocol error: {error}")
                self._write(conn.data_to_send())
                continue
            if isinstance(event, Packet):
                # The ack goes out with the reply, in one write.
                if self._handle_packet(event.payload, conn.data_to_send()):
                    return True
                continue
            self._write(conn.data_to_send())
            if event is NEED_DATA:
                return False
            if isinstance(event, Interrupt):
                if self._resuming:
                    self._interrupt_resume()
            elif isinstance(event, DroppedPacket):
                _log(self._log, f"{self._peer}: dropped packet: {event.reason}")
                self._send_payloads((error_reply(RspProtocolError(event.reason)),))

    def _interrupt_resume(self) -> None:
        """gdb's ^C: request_stop until the running resume stops (a request that lands
        just before the engine starts its run is otherwise lost)."""
        self._target.request_stop()
        while not self._resume_done.wait(INTERRUPT_RETRY_S) and not self._stopping:
            self._target.request_stop()

    def _handle_packet(self, payload: bytes, acks: bytes) -> bool:
        if self._resuming and self._resume_done.is_set():
            self._resuming = False
        if self._resuming and not self._nonstop.enabled:
            _log(self._log, f"{self._peer}: packet {payload[:32]!r} while the guest runs")
            self._send_payloads((error_reply(RspProtocolError("target is running")),), acks)
            return False
        outcome = self._nonstop.handle(payload) or self._stub.handle(payload)
        if isinstance(outcome, ResumeRequest):
            if self._nonstop.enabled:      # OK now; the stop comes as a %Stop notification
                reply = self._nonstop.accept_resume(outcome)
                self._send_payloads((reply,), acks)
                if reply != b"OK":
                    return False
                acks = b""
            elif outcome.short:
                self._send_payloads(self._stub.run_resume(outcome).payloads, acks)
                return False
            elif outcome.inline and self._peek is not None and not self._conn.buffered_bytes:
                # No worker thread handoff (~10-50 us a continue): run here, with the
                # watch thread looking out for ^C meanwhile.
                self._write(acks)
                self._run_inline(outcome)
                return False
            self._write(acks)
            self._resuming = True
            self._resume_done.clear()
            if self._worker is None:       # one long-lived worker: a thread per resume
                self._worker = threading.Thread(target=self._resume_worker,  # costs ~160 us
                                                name="pvdbg-resume", daemon=True)
                self._worker.start()
            self._requests.put(outcome)
            return False
        self._send_payloads(outcome.payloads, acks)
        if outcome.after is AfterReply.START_NO_ACK:
            self._conn.start_no_ack_mode()
        if outcome.after is AfterReply.CLOSE:
            self._finished_by_gdb = True
            return True
        return False

    def _run_inline(self, request: ResumeRequest) -> None:
        if self._watch is None:
            self._watch = _InterruptWatch(*self._peek, self._target)
        self._watch.begin()
        try:
            replies = self._stub.run_resume(request)
        finally:
            self._watch.end()
        self._send_payloads(replies.payloads)

    def _resume_worker(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            replies = self._stub.run_resume(request)
            # Marked done before the reply leaves: gdb's next packet comes after it.
            self._resume_done.set()
            if not self.ending.is_set():
                try:
                    if self._nonstop.enabled:
                        self._write(self._nonstop.stopped(replies))
                    else:
                        self._send_payloads(replies.payloads)
                except (OSError, ValueError) as error:
                    _log(self._log, f"{self._peer}: cannot send the stop reply: {error}")

    def _send_payloads(self, payloads: tuple[bytes, ...], prefix: bytes = b"") -> None:
        """Frame `payloads` and write them, after `prefix`, in one write."""
        with self._write_lock:
            send = self._conn.send
            if len(payloads) == 1:
                data = prefix + send(payloads[0])
            else:
                data = prefix + b"".join(send(payload) for payload in payloads)
            if data:
                self._raw_write(data)

    def _finish(self) -> None:
        self.ending.set()
        self._requests.put(None)
        if self._watch is not None:
            self._watch.close()
        if self._resuming and not self._resume_done.is_set():
            deadline = time.monotonic() + RESUME_STOP_TIMEOUT_S
            while not self._resume_done.is_set() and time.monotonic() < deadline:
                self._target.request_stop()
                self._resume_done.wait(INTERRUPT_RETRY_S)
            if not self._resume_done.is_set():
                _log(self._log, "target did not stop after request_stop; leaving it running")
        still_running = self._resuming and not self._resume_done.is_set()
        if not self._finished_by_gdb and not still_running:
            try:
                self._target.detach()
            except Exception as error:
                _log(self._log, f"target.detach failed: {error}")
        try:
            self._close()
        except OSError:
            pass


def _socket_wake(sock: socket.socket) -> Callable[[], None]:
    """Make a recv blocked on `sock` in another thread return (EOF)."""
    def wake() -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    return wake


def _socket_read(sock: socket.socket) -> Callable[[], bytes]:
    """recv of up to READ_CHUNK_BYTES: polled for READ_SPIN_S, then a blocking wait."""
    flags = socket.MSG_DONTWAIT
    clock = time.perf_counter

    def read_chunk() -> bytes:
        give_up = clock() + READ_SPIN_S
        while True:
            try:
                return sock.recv(READ_CHUNK_BYTES, flags)
            except BlockingIOError:
                if clock() >= give_up:
                    return sock.recv(READ_CHUNK_BYTES)
    return read_chunk


def _socket_peek(sock: socket.socket) -> Callable[[], bytes]:
    """What gdb sent and nobody read yet, left in place; BlockingIOError if nothing."""
    def peek() -> bytes:
        return sock.recv(READ_CHUNK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    return peek


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
                client = _ClientLoop(self._target, _socket_read(sock),
                                     sock.sendall, _socket_close(sock),
                                     max_packet_size=self._max_packet_size, log=self._log,
                                     peer=peer, wake_reader=_socket_wake(sock),
                                     peek=(sock.fileno(), _socket_peek(sock)))
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
