"""A long capture as a series of pcapng files (capture -C MB, -G SEC, -W COUNT), as tcpdump
rotates them: FILE.pcapng becomes FILE-000.pcapng, FILE-001.pcapng, ... each a whole pcapng
file of its own (section header, the interfaces, packets, statistics at its end).

A file is written under a hidden temporary name beside it and renamed to its own name only
once complete: a name always holds a whole file, even when the capture is killed (the file
being written then stays as .NAME.partial, readable up to its last whole block). With -W, the
names are a ring of COUNT: the next file replaces the oldest (rename over it, atomically).
"""
import os
import time

from bpfhook import pcapng


class RotatingWriter:
    """pcapng.Writer's interface over a series of files.

    max_bytes: start a new file once this many are written (None: no limit)
    seconds:   ... or once the file is this old (None: no limit)
    count:     names kept in a ring (None: numbered on without end)
    on_rotate: called with this writer before a file is closed (the capture writes its
               statistics blocks there)"""

    def __init__(self, path, application="bpfhook", max_bytes=None, seconds=None, count=None, on_rotate=None,
                 clock=time.monotonic):
        if max_bytes is None and seconds is None:
            raise ValueError("a rotating writer needs max_bytes or seconds")
        stem, ext = os.path.splitext(path)
        self._stem, self._ext = stem, ext or ".pcapng"
        self.application, self.max_bytes, self.seconds, self.count = application, max_bytes, seconds, count
        self.on_rotate = on_rotate
        self._clock = clock
        self._described = []  # interface() calls, made again in every file
        self.interfaces = []
        self.index = 0
        self.done = []  # the complete files' names, in order
        if os.path.lexists(self.name(0)):
            raise pcapng.PcapngError(f"{self.name(0)} exists; captures are never overwritten")
        self._open()

    def name(self, index):
        number = index % self.count if self.count else index
        return f"{self._stem}-{number:03d}{self._ext}"

    @property
    def path(self):
        return self.name(self.index)

    def _open(self):
        final = self.name(self.index)
        directory, base = os.path.split(final)
        self._partial = os.path.join(directory, f".{base}.{os.getpid()}.partial")
        self._writer = pcapng.Writer(self._partial, application=self.application)
        self._opened = self._clock()
        self._written = 0  # packets and blocks in this file
        for args in self._described:
            self._writer.interface(*args)

    def _finish(self):
        """Close the file being written and give it its name (over the oldest, in a ring)."""
        self._writer.close()
        os.replace(self._partial, self.name(self.index))
        self.done.append(self.name(self.index))

    def _due(self):
        return (self.max_bytes is not None and self._writer.size >= self.max_bytes
                or self.seconds is not None and self._clock() - self._opened >= self.seconds)

    def rotate(self):
        """Close this file (its statistics first, from on_rotate) and start the next."""
        if self.on_rotate is not None:
            self.on_rotate(self)
        self._finish()
        self.index += 1
        self._open()

    # -- pcapng.Writer's interface --
    @property
    def bytes_written(self):
        return self._writer.bytes_written

    def interface(self, linktype, name, description=None, snaplen=0):
        self._described.append((linktype, name, description, snaplen))
        self.interfaces.append(linktype)
        return self._writer.interface(linktype, name, description, snaplen)

    def packet(self, *args, **kwargs):
        if self._due():
            self.rotate()
        self._writer.packet(*args, **kwargs)
        self._written += 1

    def blocks(self, blocks):
        """pcapng.Writer.blocks up to where packet() would start a new file; returns how many
        went in. When a new file is due, it is started and 0 returned: the caller hands the
        blocks again, and may rewrite some first (each file names the flows' owners again)."""
        if self._due() and self._written:  # (never twice in a row: a file holds a block at least)
            self.rotate()
            return 0
        take = len(blocks)
        if self.max_bytes is not None:  # up to the block that reaches the size, as packet()
            room, take = self.max_bytes - self._writer.size, 0
            while take < len(blocks) and room > 0:
                room -= len(blocks[take])
                take += 1
            take = max(take, 1)
        self._writer.blocks(blocks[:take])
        self._written += take
        return take

    def statistics(self, *args, **kwargs):
        self._writer.statistics(*args, **kwargs)

    def flush(self):
        self._writer.flush()

    def close(self):
        if self._writer.fd >= 0:
            self._finish()

    def discard(self):
        """Remove every file written (a capture that failed to start)."""
        self._writer.close()
        for path in [self._partial, *self.done]:
            if os.path.exists(path):
                os.unlink(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
