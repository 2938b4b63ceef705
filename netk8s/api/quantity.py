"""Kubernetes resource quantities ("100m", "2", "128Mi", "1G") as integers.

CPU is counted in millicores and everything else in base units (bytes, pods).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from netk8s.errors import ValidationError

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9),
    "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}
_PATTERN = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse(value: str | int | float, path: str = "quantity") -> Decimal:
    text = str(value).strip()
    m = _PATTERN.match(text)
    if not m or m.group(2) not in _SUFFIXES:
        raise ValidationError(path, f"quantities must match the regular expression "
                                    f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$', got {text!r}")
    try:
        return Decimal(m.group(1)) * _SUFFIXES[m.group(2)]
    except InvalidOperation:
        raise ValidationError(path, f"invalid quantity {text!r}") from None


def milli_cpu(value: str | int | float, path: str = "cpu") -> int:
    return int((parse(value, path) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def count(value: str | int | float, path: str = "quantity") -> int:
    return int(parse(value, path).to_integral_value(rounding="ROUND_CEILING"))
