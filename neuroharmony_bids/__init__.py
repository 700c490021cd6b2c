"""neuroharmony-bids: harmonize FreeSurfer regional volumes of single scans from MRIQC IQMs."""

from neuroharmony_bids._version import __version__

__all__ = ["__version__"]
