"""Dynamic perf PMUs (kprobe, uprobe): their type number and config bits, read from sysfs.

The kernel chooses both at boot; they are read, never assumed (format/retprobe names the bit).
"""
import os

from .errors import FeatureUnavailable

KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"


def _read(path):
    with open(path) as f:
        return f.read().strip()


def pmu_type(pmu, what):
    """The perf type number of the PMU directory `pmu`; `what` names the caller in the error."""
    try:
        return int(_read(f"{pmu}/type"))
    except (FileNotFoundError, NotADirectoryError):
        raise FeatureUnavailable(f"{what}: this kernel has no {os.path.basename(pmu)} PMU "
                                 f"({pmu}/type is absent)") from None


def pmu_config_bit(pmu, name):
    """attr.config with the PMU's `name` bit set: format/<name> reads "config:<bit>"."""
    path = f"{pmu}/format/{name}"
    try:
        field, _, bit = _read(path).partition(":")
    except FileNotFoundError:
        raise FeatureUnavailable(f"{path} is absent: this PMU has no {name} bit") from None
    if field != "config" or not bit.isdigit():
        raise FeatureUnavailable(f"{path} reads {field}:{bit}; expected config:<bit>")
    return 1 << int(bit)
