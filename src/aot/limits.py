"""The limits on everything read from outside: one policy, stated in docs/limits.md.

A file may declare any size it likes (a tensor's shape and strides, a zip member's size, an image's
dimensions, a class label, a counter); nothing declared is allocated or trusted before it is checked
against one of the limits below. Every refusal is a one-line UserError naming the file, the field
and the limit, with the environment variable that raises it where a real user could need more.

    limit            default        environment variable      what it caps
    tensor_bytes     4 GiB          AOT_MAX_TENSOR_BYTES      bytes of the tensors and arrays of one network,
                                                              pickle or .pt file, counted at their shapes
                                                              after views and broadcasting (a training state:
                                                              8 times this)
    array_bytes      16 GiB         AOT_MAX_ARRAY_BYTES       bytes of one array of an .npz file (sample sets,
                                                              shards, reference statistics), from its header
    member_bytes     256 MiB        AOT_MAX_MEMBER_BYTES      bytes one file of a dataset (a zip member or a
                                                              folder's file: an image, dataset.json) unpacks to
    image_pixels     16,777,216     AOT_MAX_IMAGE_PIXELS      pixels (width x height) of one dataset image
    dataset_bytes    64 GiB         AOT_MAX_DATASET_BYTES     bytes of a dataset in memory: N x C x H x W images
                                                              (x-flips counted) plus one-hot labels
    classes          10,000         AOT_MAX_CLASSES           class labels 0 .. classes-1; length of label vectors
    json_bytes       64 MiB         AOT_MAX_JSON_BYTES        bytes of one JSON file or JSON text
    json_depth       100            (fixed)                   nesting of JSON values
    counter          2**53          (fixed)                   counters of a training state (images, ticks,
                                                              pool index and position)

A value of the environment variable must be a positive whole number (bytes, pixels or classes).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import UserError

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Limit:
    name: str
    default: int
    env: str | None
    unit: str

    def value(self, override: int | None = None) -> int:
        """`override`, else the environment variable, else the default."""
        if override is None:
            text = os.environ.get(self.env, "").strip() if self.env else ""
            if not text:
                return self.default
            try:
                override = int(text.replace("_", ""))
            except ValueError:
                raise UserError(f"${self.env} must be a whole number of {self.unit}, got {text!r}") from None
        if isinstance(override, bool) or not isinstance(override, int) or override <= 0:
            where = f"${self.env}" if self.env else f"the {self.name} limit"
            raise UserError(f"{where} must be a positive number of {self.unit}, got {override!r}")
        return override

    def hint(self) -> str:
        """How to raise the limit, for an error message."""
        return f"raise ${self.env} if the file is trusted and this large" if self.env else "a fixed limit"


TENSOR_BYTES = Limit("tensor_bytes", 4 * GiB, "AOT_MAX_TENSOR_BYTES", "bytes")
ARRAY_BYTES = Limit("array_bytes", 16 * GiB, "AOT_MAX_ARRAY_BYTES", "bytes")
MEMBER_BYTES = Limit("member_bytes", 256 * MiB, "AOT_MAX_MEMBER_BYTES", "bytes")
IMAGE_PIXELS = Limit("image_pixels", 1 << 24, "AOT_MAX_IMAGE_PIXELS", "pixels")
DATASET_BYTES = Limit("dataset_bytes", 64 * GiB, "AOT_MAX_DATASET_BYTES", "bytes")
CLASSES = Limit("classes", 10_000, "AOT_MAX_CLASSES", "classes")
JSON_BYTES = Limit("json_bytes", 64 * MiB, "AOT_MAX_JSON_BYTES", "bytes")
JSON_DEPTH = 100
COUNTER_MAX = 1 << 53  # the largest whole number a float64 (and JSON) holds exactly
STATE_SIZE_FACTOR = 8  # a training state: network, EMA, Adam's two moments, pools

ALL = (TENSOR_BYTES, ARRAY_BYTES, MEMBER_BYTES, IMAGE_PIXELS, DATASET_BYTES, CLASSES, JSON_BYTES)


def check_size(amount: int, limit: Limit, what: str, override: int | None = None) -> None:
    """A UserError when `amount` (declared or computed, before anything is allocated) exceeds `limit`;
    `what` reads on into the amount: "dataset d.zip: img.png unpacks to" (... 5000000000 bytes, ...)."""
    cap = limit.value(override)
    if amount > cap:
        raise UserError(f"{what} {amount} {limit.unit}, more than the limit of {cap} ({limit.hint()})")


def product(values) -> int:
    """The product of whole numbers (shapes), exact however large."""
    return math.prod(int(v) for v in values)


def whole_number(value, what: str, lo: int = 0, hi: int = COUNTER_MAX) -> int:
    """`value` if it is a whole number (an int, not a bool) in lo..hi; else a UserError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if isinstance(value, float) else type(value).__name__
        raise UserError(f"{what} is {shown}, not a whole number")
    if not lo <= value <= hi:
        shown = str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer"
        raise UserError(f"{what} is {shown}, outside {lo}..{hi}")
    return value
