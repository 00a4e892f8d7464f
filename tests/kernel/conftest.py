"""Kernel-test fixtures: throwaway lab containers."""
import itertools
import os

import pytest

from bpfhook.lab import Lab, LabError

_serial = itertools.count()


@pytest.fixture
def lab():
    """Factory: lab(ipv6=True, name=None) -> a running Container.

    Everything it made is taken down after the test, pass or fail.
    """
    made = []

    def make(ipv6=True, name=None):
        name = name or f"t{os.getpid()}-{next(_serial)}"
        made.append(name)
        return Lab.up(name, ipv6=ipv6)

    yield make
    for name in made:
        try:
            Lab.down(name)
        except LabError:  # the test took it down itself, or up failed and rolled back
            pass
