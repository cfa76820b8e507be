"""Checks of a job's numeric settings (fine-tuning, pretraining, data
making): each wrong value is a `DataError` naming the setting as the
command line spells it and the range expected, before any work starts."""

import math
import numbers

from bertdesk.data.tables import DataError


def whole(config, name, minimum=1, option=None):
    """`config.<name>` must be a whole number (an int or numpy integer, not
    a bool) >= `minimum`."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DataError(f"{option or _option(name)}: expected a whole number >= {minimum}, "
                        f"got {value!r}")


def number(config, name, low, high=math.inf, low_open=False, high_open=False, option=None):
    """`config.<name>` must be a real number in the interval from `low` to
    `high` (each end excluded where `*_open`)."""
    value = getattr(config, name)
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
        span = f"{left}{low:g}, {'inf' if high == math.inf else f'{high:g}'}{right}"
        raise DataError(f"{option or _option(name)}: expected a number in {span}, got {value!r}")


def _option(name):
    return "--" + name.replace("_", "-")
