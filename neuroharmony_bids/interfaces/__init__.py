"""Adapters to external tools and their outputs: FreeSurfer and MRIQC (parse, write, run)."""
