"""Errors that carry a BIDS-Apps exit code and a message saying what, where, and how to fix."""

from __future__ import annotations


class NeuroharmonyError(Exception):
    """Base class: ``exit_code`` follows the BIDS-Apps execution spec."""

    exit_code = 1


class UsageError(NeuroharmonyError):
    """Bad command line or option combination."""

    exit_code = 64


class DataError(NeuroharmonyError, ValueError):
    """Input data present but malformed (sysexits EX_DATAERR)."""

    exit_code = 65


class MissingInputError(NeuroharmonyError):
    """A required input file, derivative or tool is missing."""

    exit_code = 66


class InvalidBIDSError(NeuroharmonyError):
    """The input folder is not a valid BIDS dataset."""

    exit_code = 16


class NothingSelectedError(NeuroharmonyError):
    """The participant/session filters selected no scan."""

    exit_code = 18


class ModelFileError(DataError):
    """A model file is corrupt, incompatible, or not a neuroharmony model."""
