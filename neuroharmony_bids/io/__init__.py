"""Readers of tool output formats (FreeSurfer stats, MRIQC IQMs), one module per format."""
