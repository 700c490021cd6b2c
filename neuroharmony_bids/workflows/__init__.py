"""Nipype workflow factories and the two drivers (participant, group).

Nipype runs the external tools (MRIQC, recon-all) only when their outputs are missing; parsing
existing derivatives and harmonizing is one vectorized batch (Nipype's per-node overhead would
otherwise dominate: 1,000 scans with existing derivatives take seconds this way).
"""
