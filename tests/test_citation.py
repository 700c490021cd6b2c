"""CITATION.md / CITATION.bib: every tool named with a DOI and the versions actually used."""

from __future__ import annotations

import re
from importlib import metadata

from neuroharmony_bids.reports.citation import REFERENCES, write_citation

# The DOIs each tool is cited by; checked against the publishers' records when written.
EXPECTED_DOIS = {
    "Neuroharmony": "10.1016/j.neuroimage.2020.117127",
    "ComBat (Johnson 2007)": "10.1093/biostatistics/kxj037",
    "ComBat DTI (Fortin 2017)": "10.1016/j.neuroimage.2017.08.047",
    "ComBat thickness (Fortin 2018)": "10.1016/j.neuroimage.2017.11.024",
    "MRIQC": "10.1371/journal.pone.0184661",
    "FreeSurfer (Fischl 2012)": "10.1016/j.neuroimage.2012.01.021",
    "FreeSurfer (Dale 1999)": "10.1006/nimg.1998.0395",
    "Nipype": "10.3389/fninf.2011.00013",
    "pybids": "10.21105/joss.01294",
}


def test_writes_markdown_and_bibtex_with_versions(tmp_path):
    write_citation(tmp_path / "logs", {"freesurfer": "7.4.1", "mriqc": "23.1.0", "model": "abide1"})
    md = (tmp_path / "logs" / "CITATION.md").read_text()
    bib = (tmp_path / "logs" / "CITATION.bib").read_text()
    for doi in EXPECTED_DOIS.values():
        assert doi in md
        assert doi in bib
    for name in (
        "Neuroharmony",
        "ComBat",
        "neuroCombat",
        "MRIQC",
        "FreeSurfer",
        "Nipype",
        "PyBIDS",
    ):
        assert name in md
    assert "FreeSurfer 7.4.1" in md
    assert "MRIQC 23.1.0" in md
    assert f"Nipype {metadata.version('nipype')}" in md
    assert f"PyBIDS {metadata.version('pybids')}" in md
    assert "| neuroCombat | " + metadata.version("neuroCombat") in md


def test_every_cited_key_has_an_entry_and_bibtex_is_balanced(tmp_path):
    write_citation(tmp_path, {})
    md = (tmp_path / "CITATION.md").read_text()
    bib = (tmp_path / "CITATION.bib").read_text()
    cited = set()
    for group in re.findall(r"\[([a-z0-9; ]+)\]", md):
        cited.update(k.strip() for k in group.split(";"))
    assert cited <= set(REFERENCES)
    keys = re.findall(r"^@article\{([^,]+),", bib, flags=re.M)
    assert sorted(keys) == sorted(REFERENCES)
    assert bib.count("{") == bib.count("}")


def test_unknown_versions_are_said_not_guessed(tmp_path):
    write_citation(tmp_path, {})
    md = (tmp_path / "CITATION.md").read_text()
    assert "FreeSurfer version not recorded" in md
    assert "| MRIQC | version not recorded |" in md
