"""pybpf.fd: the one close()/with/collection protocol of maps, programs, links and readers."""
import gc
import os

import pytest

from pybpf.attachment import Attachment, Link
from pybpf.errors import BpfError
from pybpf.fd import Closeable, FdOwner
from pybpf.maps import Map
from pybpf.prog import LoadedProgram
from pybpf.readers.base import EventReader


class Pipe(FdOwner):
    what = "pipe"

    def __init__(self):
        read, write = os.pipe()
        os.close(write)
        self._own(read)


def _is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_close_once_by_hand_with_and_collection():
    pipe = Pipe()
    fd = pipe.fd
    assert not pipe.closed and pipe._live_fd() == fd
    pipe.close()
    pipe.close()  # idempotent
    assert pipe.closed and pipe.fd == -1 and not _is_open(fd)
    with pytest.raises(BpfError, match="pipe is closed"):
        pipe._live_fd()
    with Pipe() as pipe:
        fd = pipe.fd
    assert pipe.closed and not _is_open(fd)
    pipe = Pipe()
    fd = pipe.fd
    del pipe
    gc.collect()
    assert not _is_open(fd)


def test_unpin_without_a_pin_is_nothing_to_do():
    with Pipe() as pipe:
        pipe.unpin()
        assert pipe.pinned is None


def test_every_owner_shares_the_protocol():
    """Written once: no owner defines its own __enter__/__exit__/__del__, nor close() (but readers,
    which deliver what is left first), nor pin()/unpin()."""
    for cls in (Map, LoadedProgram, Link, EventReader, Attachment):
        assert issubclass(cls, Closeable)
        assert {"__enter__", "__exit__", "__del__", "pin", "unpin"} & set(vars(cls)) == set()
        assert ("close" in vars(cls)) == (cls is EventReader)
    for cls in (Map, LoadedProgram, Link):
        assert issubclass(cls, FdOwner)
