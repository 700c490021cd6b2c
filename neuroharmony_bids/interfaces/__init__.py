"""Nipype wrappers of the external tools (FreeSurfer recon-all, MRIQC): tool wrappers only.

Nipype asks the network for new releases when an interface runs unless ``NIPYPE_NO_ET`` is
set; this package never uses the network, so it sets it before Nipype can be imported.
"""

import os

os.environ.setdefault("NIPYPE_NO_ET", "1")
