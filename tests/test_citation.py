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


def test_versions_read_from_an_output_folder(tmp_path):
    import json

    from neuroharmony_bids.reports.citation import main, versions_from_outputs

    out = tmp_path / "out"
    (out / "sub-01" / "anat").mkdir(parents=True)
    (out / "sub-02" / "ses-1" / "anat").mkdir(parents=True)
    (out / "dataset_description.json").write_text(
        json.dumps(
            {
                "GeneratedBy": [{"Name": "neuroharmony-bids", "Version": "9.9.9"}],
                "NeuroharmonyModel": {"name": "my-model", "sha256": "ab" * 32},
            }
        )
    )
    fs6 = "$Id: mri_segstats.c,v 1.121 2016/05/31 17:27:11 greve Exp $"
    for sidecar, fs, mq in (
        (out / "sub-01" / "anat" / "sub-01_desc-raw_morph.json", "7.4.1", "24.0.2"),
        (out / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_desc-raw_morph.json", fs6, "0.16.1"),
    ):
        sidecar.write_text(
            json.dumps({"FreeSurfer": {"Version": fs}, "ImageQualityMetrics": {"Version": mq}})
        )
    versions = versions_from_outputs(out)
    assert versions["model"] == "my-model" and versions["model_sha256"] == "ab" * 32
    assert versions["neuroharmony-bids"] == "9.9.9"
    assert versions["freesurfer"] == "6.x or earlier (mri_segstats.c v1.121), 7.4.1"
    assert versions["mriqc"] == "0.16.1, 24.0.2"
    assert main([str(out)]) == 0
    md = (out / "logs" / "CITATION.md").read_text()
    assert "neuroharmony-bids 9.9.9" in md and "`my-model`" in md
    assert "MRIQC 0.16.1, 24.0.2" in md
    assert main([str(tmp_path / "missing")]) == 64


def test_version_strings_cannot_inject_markdown(tmp_path):
    """Hostile version strings stay literal text: no table break, link, HTML or heading."""
    from markdown_it import MarkdownIt

    hostile = "7.4.1 | x |\n# Owned [click](javascript:alert(1)) <script>alert(1)</script> `x` *b*"
    write_citation(
        tmp_path,
        {"freesurfer": hostile, "mriqc": "<img src=x onerror=alert(1)>", "model": "m` <b>",
         "model_sha256": "ab|`cd", "extra | tool": "1.0 ~~x~~ $x$"},
    )  # fmt: skip
    md = (tmp_path / "CITATION.md").read_text()
    html = MarkdownIt("commonmark").enable("table").render(md)
    for active in ("<script", "<img", "<b>", 'href="javascript', "<h1>Owned", "<em>", "<del>"):
        assert active not in html, active
    assert html.count("<a href") == len(REFERENCES)  # the DOI links only
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, not run
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    table = html[html.index("<table>") : html.index("</table>")]
    assert table.count("<tr>") == len(rows) - 1  # all but the --- line: none split or lost
    for row in table.split("<tr>")[2:]:
        assert row.count("<td>") == 2, row


def test_markdown_helpers_leave_ordinary_text_alone():
    from neuroharmony_bids.reports.markdown import code, escape

    for plain in ("7.4.1", "ABIDE-I", "23.1.0 (mriqc-learn)", "site A, 2019"):
        assert escape(plain) == plain
    assert escape("# x") == "\\# x" and escape("1. x") == "1\\. x" and escape("- x") == "\\- x"
    assert escape("a\nb\tc") == "a b c"
    assert code("abc") == "`abc`" and code("a`b") == "``a`b``" and code("`a") == "`` `a ``"
