"""Errors a user can act on.

Every error cellprof raises on purpose is a :class:`CellprofError`; the command line
prints its message as one red line and exits non-zero, without a traceback. Messages
name the file, row or column at fault and say what was expected.
"""

from __future__ import annotations


class CellprofError(Exception):
    """Base class: an input or state problem the user can fix."""


class InputError(CellprofError):
    """A table, image or option is not what cellprof expected."""


class ImageError(InputError):
    """One image cannot be used; ``kind`` names why in the crop issue log."""

    kind = "unreadable_image"


class MissingImage(ImageError):
    kind = "missing_image"


class WrongSize(ImageError):
    kind = "wrong_size"


class MissingChannel(ImageError):
    """A multi-channel file whose own channel names lack one the screen needs."""

    kind = "missing_channel"


class ChannelOrder(ImageError):
    """A multi-channel file whose own channel names put a channel on another plane than
    the image table's ``Frame_`` column says."""

    kind = "channel_order"


class MixedBitDepth(ImageError):
    """One field's channels stored at different bit depths (an 8-bit plane beside 16-bit
    ones would be stacked as 16-bit, 256 times too dark)."""

    kind = "mixed_bit_depth"


class StoreError(CellprofError):
    """An HDF5 file is not a (complete, compatible) cellprof file."""


class CheckpointError(CellprofError):
    """A checkpoint is missing, not a cellprof checkpoint, or does not fit the data."""
