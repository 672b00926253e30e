"""The run directory: its ipc:// endpoints, its cleanup, and binds that never destroy another's file.

Real files, real AF_UNIX and ZeroMQ sockets in a temp directory; nothing is mocked.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from pipeline.settings import load_settings
from pipeline.wire.runpaths import (
    OWNER_FILE,
    RUN_DIR_PREFIX,
    RunPaths,
    SocketFile,
    bind_claimed,
    claim_ipc_path,
    remove_stale_run_dirs,
    unlink_ipc,
)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def stale_socket_file(path: Path) -> None:
    """A socket file nobody serves any more: what a killed process leaves behind."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    assert path.is_socket()


def roundtrip(ctx: zmq.Context, server: zmq.Socket, endpoint: str, payload: bytes) -> bytes:
    """Send ``payload`` to ``server`` from a fresh DEALER on ``endpoint`` and return what it received."""
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(endpoint)
    try:
        peer.send(payload)
        assert server.poll(5000), f"nothing reached the socket bound at {endpoint}"
        return server.recv_multipart()[-1]
    finally:
        peer.close()


# -- RunPaths ------------------------------------------------------------------------------------

def test_run_paths_name_one_socket_file_per_endpoint_inside_the_run_directory(tmp_path):
    run = RunPaths(tmp_path)
    assert run.workers == f"ipc://{tmp_path}/workers.sock"
    assert run.sink_in == f"ipc://{tmp_path}/sink-in.sock"
    assert run.sink_out == f"ipc://{tmp_path}/sink-out.sock"
    assert run.ctl("coordinator") == f"ipc://{tmp_path}/ctl-coordinator.sock"
    assert run.ctl("w0") != run.ctl("w1")
    endpoints = [run.workers, run.sink_in, run.sink_out, run.ctl("sink")]
    assert len(set(endpoints)) == len(endpoints)


def test_settings_written_to_the_run_directory_read_back_equal(tmp_path):
    run = RunPaths(tmp_path)
    settings = load_settings().with_service(workers=3, heartbeat_interval_s=0.25)
    run.write_settings(settings)
    assert run.settings_file == tmp_path / "settings.json"
    assert run.read_settings() == settings
    assert not run.settings_file.with_suffix(".tmp").exists(), "written by an atomic rename"


def test_claim_marks_the_directory_with_this_process(tmp_path):
    RunPaths(tmp_path).claim()
    assert (tmp_path / OWNER_FILE).read_text() == str(os.getpid())


# -- remove_stale_run_dirs -----------------------------------------------------------------------

def run_dir(parent: Path, name: str, owner: int | str | None) -> Path:
    path = parent / (RUN_DIR_PREFIX + name)
    path.mkdir()
    (path / "workers.sock").write_text("")  # something inside, so the whole tree must go
    if owner is not None:
        (path / OWNER_FILE).write_text(str(owner))
    return path


def test_only_run_directories_of_dead_supervisors_are_removed(tmp_path):
    gone = run_dir(tmp_path, "gone", dead_pid())
    alive = run_dir(tmp_path, "alive", os.getpid())
    unclaimed = run_dir(tmp_path, "unclaimed", None)  # a supervisor that has not written its pid yet
    garbled = run_dir(tmp_path, "garbled", "not a pid")
    other = tmp_path / "someone-else"
    other.mkdir()
    (other / OWNER_FILE).write_text(str(dead_pid()))
    a_file = tmp_path / (RUN_DIR_PREFIX + "file")
    a_file.write_text(str(dead_pid()))

    assert remove_stale_run_dirs(tmp_path) == [gone]
    assert not gone.exists()
    assert alive.is_dir() and unclaimed.is_dir() and garbled.is_dir() and other.is_dir() and a_file.is_file()
    assert remove_stale_run_dirs(tmp_path) == [], "nothing left to remove"


# -- unlink_ipc ----------------------------------------------------------------------------------

def test_unlink_ipc_removes_the_socket_file_and_ignores_the_rest(tmp_path):
    path = tmp_path / "x.sock"
    stale_socket_file(path)
    unlink_ipc(f"ipc://{path}")
    assert not path.exists()
    unlink_ipc(f"ipc://{path}")  # already gone: no error
    unlink_ipc("tcp://127.0.0.1:5555")
    unlink_ipc("inproc://x")


# -- claim_ipc_path / bind_claimed / SocketFile ---------------------------------------------------

def test_claim_of_a_free_path_returns_it_and_non_files_return_none(tmp_path):
    path = tmp_path / "free.sock"
    assert claim_ipc_path(f"ipc://{path}") == str(path)
    assert not path.exists(), "claiming checks; it creates nothing"
    assert claim_ipc_path("ipc://@abstract-name") is None  # Linux abstract namespace: no file
    assert claim_ipc_path("tcp://127.0.0.1:0") is None
    assert claim_ipc_path("inproc://x") is None


def router_at(ctx: zmq.Context, path: Path) -> tuple[zmq.Socket, str, SocketFile | None]:
    """A ROUTER bound (claimed) at ``path``: the socket, its endpoint and its socket file."""
    endpoint = f"ipc://{path}"
    sock = ctx.socket(zmq.ROUTER)
    return sock, endpoint, bind_claimed(sock, endpoint)


def test_a_stale_socket_file_is_replaced_by_the_bind(tmp_path, ctx):
    path = tmp_path / "stale.sock"
    stale_socket_file(path)
    assert claim_ipc_path(f"ipc://{path}") == str(path)
    sock, endpoint, owned = router_at(ctx, path)
    assert owned == SocketFile(str(path), path.stat().st_ino)
    assert roundtrip(ctx, sock, endpoint, b"hello") == b"hello", "the new bind serves the path"
    sock.close()
    wait_until_unserved(path)
    owned.remove()
    assert not path.exists()


def assert_refused(ctx: zmq.Context, endpoint: str, why: str) -> None:
    """Neither a claim nor a bind takes ``endpoint``: EADDRINUSE saying ``why``, and nothing is bound."""
    with pytest.raises(zmq.ZMQError) as refused:
        claim_ipc_path(endpoint)
    assert refused.value.errno == errno.EADDRINUSE and why in str(refused.value)
    sock = ctx.socket(zmq.ROUTER)
    with pytest.raises(zmq.ZMQError) as refused:
        bind_claimed(sock, endpoint)
    assert refused.value.errno == errno.EADDRINUSE
    assert sock.getsockopt(zmq.LAST_ENDPOINT) == b"", "nothing was bound"
    sock.close()


def test_a_regular_file_at_the_path_is_refused_and_kept(tmp_path, ctx):
    path = tmp_path / "data.sock"
    path.write_text("precious")
    assert_refused(ctx, f"ipc://{path}", "not a socket")
    assert path.read_text() == "precious"


def test_a_socket_another_process_still_serves_is_refused_and_keeps_serving(tmp_path, ctx):
    path = tmp_path / "live.sock"
    owner, endpoint, owned = router_at(ctx, path)
    inode = path.stat().st_ino
    assert_refused(ctx, endpoint, "serving")
    assert path.stat().st_ino == inode, "the live socket's file is untouched"
    assert roundtrip(ctx, owner, endpoint, b"still here") == b"still here"
    owner.close()
    wait_until_unserved(path)
    owned.remove()
    assert not path.exists()


def test_a_listening_plain_unix_socket_is_refused_too(tmp_path):
    path = tmp_path / "plain.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        with pytest.raises(zmq.ZMQError) as refused:
            claim_ipc_path(f"ipc://{path}")
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        listener.close()


def wait_until_unserved(path: Path, timeout_s: float = 5.0) -> None:
    """Until nothing listens on ``path`` (a closed ZeroMQ socket's listener is closed by its I/O thread)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            claim_ipc_path(f"ipc://{path}")
            return
        except zmq.ZMQError:
            assert time.monotonic() < deadline, f"{path} is still served {timeout_s} s after its socket closed"
            time.sleep(0.005)


def bind_then_close(ctx: zmq.Context, path: Path) -> SocketFile:
    """A bind whose socket has closed since: ZeroMQ leaves the file behind, and nobody serves it."""
    sock, _, owned = router_at(ctx, path)
    sock.close()
    wait_until_unserved(path)
    assert path.is_socket()
    return owned


def test_remove_deletes_only_the_file_it_bound(tmp_path, ctx):
    path = tmp_path / "mine.sock"
    endpoint = f"ipc://{path}"
    mine = bind_then_close(ctx, path)
    os.link(path, tmp_path / "held")  # keeps the old inode allocated: the next file cannot reuse its number

    second = ctx.socket(zmq.ROUTER)  # another process binds the path since (the stale file is replaced)
    theirs = bind_claimed(second, endpoint)
    assert theirs.inode != mine.inode
    mine.remove()
    assert path.is_socket() and path.stat().st_ino == theirs.inode, "another's file is left alone"
    assert roundtrip(ctx, second, endpoint, b"theirs") == b"theirs"
    second.close()
    wait_until_unserved(path)
    theirs.remove()
    assert not path.exists()
    theirs.remove()  # already gone: no error
    mine.remove()


def test_remove_leaves_a_successors_file_even_when_the_filesystem_reuses_the_inode_number(tmp_path, ctx):
    """ext4 hands a freed inode number to the next file made: the successor's file then has ours."""
    path = tmp_path / "mine.sock"
    mine = bind_then_close(ctx, path)
    second, endpoint, theirs = router_at(ctx, path)
    try:
        mine.remove()
        assert path.exists() and path.stat().st_ino == theirs.inode, \
            f"the successor's file was deleted (old inode {mine.inode}, new {theirs.inode})"
    finally:
        second.close()
        wait_until_unserved(path)
        theirs.remove()


def test_remove_leaves_the_file_while_its_socket_still_serves_it(tmp_path, ctx):
    path = tmp_path / "open.sock"
    sock, endpoint, owned = router_at(ctx, path)
    owned.remove()  # too early: the socket is open
    assert path.is_socket() and roundtrip(ctx, sock, endpoint, b"served") == b"served"
    sock.close()
    wait_until_unserved(path)
    owned.remove()
    assert not path.exists()


def test_a_tcp_bind_has_no_file_to_own(ctx):
    sock = ctx.socket(zmq.ROUTER)
    assert bind_claimed(sock, "tcp://127.0.0.1:0") is None
    assert sock.getsockopt(zmq.LAST_ENDPOINT).decode().startswith("tcp://127.0.0.1:")
    sock.close()
