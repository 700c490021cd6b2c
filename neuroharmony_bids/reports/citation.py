"""Citation boilerplate (``logs/CITATION.md`` and ``logs/CITATION.bib``) for a run.

A methods section must name the tools and their versions; writing it for the user, from the
versions actually used, avoids both omissions and mismatched version numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from neuroharmony_bids._version import __version__
from neuroharmony_bids.atomic import write_text
from neuroharmony_bids.reports.markdown import code, escape


@dataclass(frozen=True)
class Reference:
    """One bibliography entry: BibTeX key, formatted text and BibTeX fields."""

    key: str
    text: str
    doi: str
    bibtex: str


REFERENCES: dict[str, Reference] = {
    r.key: r
    for r in [
        Reference(
            "garciadias2020neuroharmony",
            "Garcia-Dias R, Scarpazza C, Baecker L, Vieira S, Pinaya WHL, Corvin A, et al. "
            "Neuroharmony: A new tool for harmonizing volumetric MRI data from unseen scanners. "
            "NeuroImage. 2020;220:117127.",
            "10.1016/j.neuroimage.2020.117127",
            """@article{garciadias2020neuroharmony,
  author  = {Garcia-Dias, Rafael and Scarpazza, Cristina and Baecker, Lea and Vieira, Sandra and Pinaya, Walter H. L. and Corvin, Aiden and others and Mechelli, Andrea},
  title   = {Neuroharmony: A new tool for harmonizing volumetric {MRI} data from unseen scanners},
  journal = {NeuroImage},
  volume  = {220},
  pages   = {117127},
  year    = {2020},
  doi     = {10.1016/j.neuroimage.2020.117127}
}""",
        ),
        Reference(
            "johnson2007combat",
            "Johnson WE, Li C, Rabinovic A. Adjusting batch effects in microarray expression data "
            "using empirical Bayes methods. Biostatistics. 2007;8(1):118-127.",
            "10.1093/biostatistics/kxj037",
            """@article{johnson2007combat,
  author  = {Johnson, W. Evan and Li, Cheng and Rabinovic, Ariel},
  title   = {Adjusting batch effects in microarray expression data using empirical {Bayes} methods},
  journal = {Biostatistics},
  volume  = {8},
  number  = {1},
  pages   = {118--127},
  year    = {2007},
  doi     = {10.1093/biostatistics/kxj037}
}""",
        ),
        Reference(
            "fortin2017dti",
            "Fortin JP, Parker D, Tunç B, Watanabe T, Elliott MA, Ruparel K, et al. "
            "Harmonization of multi-site diffusion tensor imaging data. NeuroImage. "
            "2017;161:149-170.",
            "10.1016/j.neuroimage.2017.08.047",
            """@article{fortin2017dti,
  author  = {Fortin, Jean-Philippe and Parker, Drew and Tun{\\c{c}}, Birkan and Watanabe, Takanori and Elliott, Mark A. and Ruparel, Kosha and others and Shinohara, Russell T.},
  title   = {Harmonization of multi-site diffusion tensor imaging data},
  journal = {NeuroImage},
  volume  = {161},
  pages   = {149--170},
  year    = {2017},
  doi     = {10.1016/j.neuroimage.2017.08.047}
}""",
        ),
        Reference(
            "fortin2018thickness",
            "Fortin JP, Cullen N, Sheline YI, Taylor WD, Aselcioglu I, Cook PA, et al. "
            "Harmonization of cortical thickness measurements across scanners and sites. "
            "NeuroImage. 2018;167:104-120.",
            "10.1016/j.neuroimage.2017.11.024",
            """@article{fortin2018thickness,
  author  = {Fortin, Jean-Philippe and Cullen, Nicholas and Sheline, Yvette I. and Taylor, Warren D. and Aselcioglu, Irem and Cook, Philip A. and others and Shinohara, Russell T.},
  title   = {Harmonization of cortical thickness measurements across scanners and sites},
  journal = {NeuroImage},
  volume  = {167},
  pages   = {104--120},
  year    = {2018},
  doi     = {10.1016/j.neuroimage.2017.11.024}
}""",
        ),
        Reference(
            "esteban2017mriqc",
            "Esteban O, Birman D, Schaer M, Koyejo OO, Poldrack RA, Gorgolewski KJ. MRIQC: "
            "Advancing the automatic prediction of image quality in MRI from unseen sites. "
            "PLoS ONE. 2017;12(9):e0184661.",
            "10.1371/journal.pone.0184661",
            """@article{esteban2017mriqc,
  author  = {Esteban, Oscar and Birman, Daniel and Schaer, Marie and Koyejo, Oluwasanmi O. and Poldrack, Russell A. and Gorgolewski, Krzysztof J.},
  title   = {{MRIQC}: Advancing the automatic prediction of image quality in {MRI} from unseen sites},
  journal = {PLoS ONE},
  volume  = {12},
  number  = {9},
  pages   = {e0184661},
  year    = {2017},
  doi     = {10.1371/journal.pone.0184661}
}""",
        ),
        Reference(
            "fischl2012freesurfer",
            "Fischl B. FreeSurfer. NeuroImage. 2012;62(2):774-781.",
            "10.1016/j.neuroimage.2012.01.021",
            """@article{fischl2012freesurfer,
  author  = {Fischl, Bruce},
  title   = {{FreeSurfer}},
  journal = {NeuroImage},
  volume  = {62},
  number  = {2},
  pages   = {774--781},
  year    = {2012},
  doi     = {10.1016/j.neuroimage.2012.01.021}
}""",
        ),
        Reference(
            "dale1999cortical",
            "Dale AM, Fischl B, Sereno MI. Cortical surface-based analysis. I. Segmentation and "
            "surface reconstruction. NeuroImage. 1999;9(2):179-194.",
            "10.1006/nimg.1998.0395",
            """@article{dale1999cortical,
  author  = {Dale, Anders M. and Fischl, Bruce and Sereno, Martin I.},
  title   = {Cortical surface-based analysis. {I}. Segmentation and surface reconstruction},
  journal = {NeuroImage},
  volume  = {9},
  number  = {2},
  pages   = {179--194},
  year    = {1999},
  doi     = {10.1006/nimg.1998.0395}
}""",
        ),
        Reference(
            "fischl2002aseg",
            "Fischl B, Salat DH, Busa E, Albert M, Dieterich M, Haselgrove C, et al. Whole brain "
            "segmentation: automated labeling of neuroanatomical structures in the human brain. "
            "Neuron. 2002;33(3):341-355.",
            "10.1016/S0896-6273(02)00569-X",
            """@article{fischl2002aseg,
  author  = {Fischl, Bruce and Salat, David H. and Busa, Evelina and Albert, Marilyn and Dieterich, Megan and Haselgrove, Christian and others and Dale, Anders M.},
  title   = {Whole brain segmentation: automated labeling of neuroanatomical structures in the human brain},
  journal = {Neuron},
  volume  = {33},
  number  = {3},
  pages   = {341--355},
  year    = {2002},
  doi     = {10.1016/S0896-6273(02)00569-X}
}""",
        ),
        Reference(
            "desikan2006atlas",
            "Desikan RS, Ségonne F, Fischl B, Quinn BT, Dickerson BC, Blacker D, et al. An "
            "automated labeling system for subdividing the human cerebral cortex on MRI scans "
            "into gyral based regions of interest. NeuroImage. 2006;31(3):968-980.",
            "10.1016/j.neuroimage.2006.01.021",
            """@article{desikan2006atlas,
  author  = {Desikan, Rahul S. and S{\\'e}gonne, Florent and Fischl, Bruce and Quinn, Brian T. and Dickerson, Bradford C. and Blacker, Deborah and others and Killiany, Ronald J.},
  title   = {An automated labeling system for subdividing the human cerebral cortex on {MRI} scans into gyral based regions of interest},
  journal = {NeuroImage},
  volume  = {31},
  number  = {3},
  pages   = {968--980},
  year    = {2006},
  doi     = {10.1016/j.neuroimage.2006.01.021}
}""",
        ),
        Reference(
            "gorgolewski2011nipype",
            "Gorgolewski K, Burns CD, Madison C, Clark D, Halchenko YO, Waskom ML, Ghosh SS. "
            "Nipype: a flexible, lightweight and extensible neuroimaging data processing "
            "framework in Python. Front Neuroinform. 2011;5:13.",
            "10.3389/fninf.2011.00013",
            """@article{gorgolewski2011nipype,
  author  = {Gorgolewski, Krzysztof and Burns, Christopher D. and Madison, Cindee and Clark, Dav and Halchenko, Yaroslav O. and Waskom, Michael L. and Ghosh, Satrajit S.},
  title   = {Nipype: a flexible, lightweight and extensible neuroimaging data processing framework in {Python}},
  journal = {Frontiers in Neuroinformatics},
  volume  = {5},
  pages   = {13},
  year    = {2011},
  doi     = {10.3389/fninf.2011.00013}
}""",
        ),
        Reference(
            "yarkoni2019pybids",
            "Yarkoni T, Markiewicz CJ, de la Vega A, Gorgolewski KJ, Salo T, Halchenko YO, et al. "
            "PyBIDS: Python tools for BIDS datasets. J Open Source Softw. 2019;4(40):1294.",
            "10.21105/joss.01294",
            """@article{yarkoni2019pybids,
  author  = {Yarkoni, Tal and Markiewicz, Christopher J. and de la Vega, Alejandro and Gorgolewski, Krzysztof J. and Salo, Taylor and Halchenko, Yaroslav O. and others and Blair, Ross},
  title   = {{PyBIDS}: Python tools for {BIDS} datasets},
  journal = {Journal of Open Source Software},
  volume  = {4},
  number  = {40},
  pages   = {1294},
  year    = {2019},
  doi     = {10.21105/joss.01294}
}""",
        ),
        Reference(
            "gorgolewski2016bids",
            "Gorgolewski KJ, Auer T, Calhoun VD, Craddock RC, Das S, Duff EP, et al. The brain "
            "imaging data structure, a format for organizing and describing outputs of "
            "neuroimaging experiments. Sci Data. 2016;3:160044.",
            "10.1038/sdata.2016.44",
            """@article{gorgolewski2016bids,
  author  = {Gorgolewski, Krzysztof J. and Auer, Tibor and Calhoun, Vince D. and Craddock, R. Cameron and Das, Samir and Duff, Eugene P. and others and Poldrack, Russell A.},
  title   = {The brain imaging data structure, a format for organizing and describing outputs of neuroimaging experiments},
  journal = {Scientific Data},
  volume  = {3},
  pages   = {160044},
  year    = {2016},
  doi     = {10.1038/sdata.2016.44}
}""",
        ),
    ]
}

#: Python distributions whose installed version is recorded (display name → dist name): the one
#: list, read by the citation and by every run log.
PACKAGES = {
    "neuroharmony-bids": "neuroharmony-bids",
    "neuroCombat": "neuroCombat",
    "pybids": "pybids",
    "Nipype": "nipype",
    "scikit-learn": "scikit-learn",
    "NumPy": "numpy",
    "SciPy": "scipy",
    "pandas": "pandas",
    "NiBabel": "nibabel",
    "bids-validator-deno": "bids-validator-deno",
}

_NOT_RECORDED = "version not recorded"


def installed_versions() -> dict[str, str]:
    """Versions of the Python packages this run used, read from the installed metadata."""
    out = {}
    for label, dist in PACKAGES.items():
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[label] = __version__ if label == "neuroharmony-bids" else "not installed"
    return out


def _lookup(versions: Mapping[str, str], *names: str) -> str:
    lowered = {str(k).lower(): str(v) for k, v in versions.items() if v not in (None, "")}
    for n in names:
        if n.lower() in lowered:
            return lowered[n.lower()]
    return _NOT_RECORDED


def citation_markdown(versions: Mapping[str, str]) -> str:
    """The methods boilerplate and reference list as Markdown."""
    v = {**installed_versions(), **{str(k): str(val) for k, val in versions.items()}}
    nh = escape(_lookup(v, "neuroharmony-bids", "neuroharmony_bids"))
    fs = escape(_lookup(v, "freesurfer", "FreeSurfer"))
    mq = escape(_lookup(v, "mriqc", "MRIQC"))
    model = _lookup(v, "model", "model_name")
    sha = _lookup(v, "model_sha256", "sha256")
    refs = REFERENCES
    model_text = (
        f"the model {code(model)}" + (f" (sha256 {code(sha)})" if sha != _NOT_RECORDED else "")
        if model != _NOT_RECORDED
        else "the shipped model"
    )
    lines = [
        "# Citing this analysis",
        "",
        "Generated by neuroharmony-bids. You may copy the paragraph below into a methods "
        "section (edit as needed); the versions are the ones this run used.",
        "",
        "## Methods boilerplate",
        "",
        f"Regional brain volumes were harmonized with neuroharmony-bids {nh}, an "
        "implementation of Neuroharmony [garciadias2020neuroharmony], which predicts, from "
        "image quality metrics of a single T1-weighted scan, the correction that ComBat "
        "[johnson2007combat; fortin2017dti; fortin2018thickness] (here through neuroCombat "
        f"{escape(_lookup(v, 'neuroCombat', 'neurocombat'))}) would apply to that scan's "
        f"volumes; {model_text} was used. "
        f"Image quality metrics were computed with MRIQC {mq} [esteban2017mriqc]. "
        f"Subcortical and cortical (Desikan-Killiany) volumes were computed with FreeSurfer "
        f"{fs} [fischl2012freesurfer; dale1999cortical; fischl2002aseg; desikan2006atlas]. "
        "The dataset was organised in the Brain Imaging Data Structure [gorgolewski2016bids] "
        f"and queried with PyBIDS {escape(_lookup(v, 'pybids'))} [yarkoni2019pybids]; the "
        f"workflow was run with Nipype {escape(_lookup(v, 'Nipype', 'nipype'))} "
        "[gorgolewski2011nipype].",
        "",
        "## Software versions",
        "",
        "| software | version |",
        "| --- | --- |",
    ]
    shown = {"model", "model_name", "model_sha256", "sha256"}
    for label in ["FreeSurfer", "MRIQC", *PACKAGES]:
        lines.append(f"| {label} | {escape(_lookup(v, label))} |")
        shown.add(label.lower())
    for k, val in sorted(v.items()):
        if k.lower() not in shown:
            lines.append(f"| {escape(k)} | {escape(val)} |")
    if model != _NOT_RECORDED:
        lines.append(f"| model | {escape(model)} |")
    if sha != _NOT_RECORDED:
        lines.append(f"| model sha256 | {code(sha)} |")
    lines += ["", "## References", ""]
    for ref in refs.values():
        lines.append(f"- [{ref.key}] {ref.text} doi:[{ref.doi}](https://doi.org/{ref.doi})")
    lines += ["", "BibTeX entries for all references are in `CITATION.bib` beside this file.", ""]
    return "\n".join(lines)


def citation_bibtex() -> str:
    """All references as one BibTeX file."""
    return "\n\n".join(r.bibtex for r in REFERENCES.values()) + "\n"


def write_citation(logs_dir: str | os.PathLike, versions: Mapping[str, str]) -> None:
    """Write ``CITATION.md`` and ``CITATION.bib`` into ``logs_dir`` (atomically).

    ``versions`` adds what only the caller knows (``freesurfer``, ``mriqc`` versions read
    from the derivatives, ``model`` name, ``model_sha256``) and may override package versions.
    """
    logs = Path(logs_dir)
    write_text(logs / "CITATION.md", citation_markdown(versions))
    write_text(logs / "CITATION.bib", citation_bibtex())


def _freesurfer_label(version: str) -> str:
    """FreeSurfer 7 writes its version; 5.x/6.x write a CVS ``$Id`` line of mri_segstats."""
    if "$Id" not in version:
        return version
    m = re.search(r",v ([0-9.]+)", version)
    return "6.x or earlier" + (f" (mri_segstats.c v{m.group(1)})" if m else "")


def scan_versions(meta: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(FreeSurfer label, MRIQC version) a per-scan ``*_desc-raw_morph.json`` sidecar records."""
    fs = (meta.get("FreeSurfer") or {}).get("Version")
    mq = (meta.get("ImageQualityMetrics") or {}).get("Version")
    return (_freesurfer_label(str(fs)) if fs else None), (str(mq) if mq else None)


def versions_from_outputs(
    output_dir: str | os.PathLike,
    scan_sidecars: bool = True,
    scans: Iterable[tuple[str | None, str | None]] | None = None,
) -> dict[str, str]:
    """The versions a finished output folder records: model, FreeSurfer, MRIQC.

    Read from ``dataset_description.json`` and the per-scan ``*_desc-raw_morph.json`` sidecars,
    so the citation names what was actually used, including several FreeSurfer or MRIQC
    versions in one dataset. ``scan_sidecars=False`` skips the per-scan files (cheap enough
    for every job of a 10,000-scan SLURM array). ``scans``: the :func:`scan_versions` of every
    sidecar, when the caller has already read them all (the group level: at 5,000 scans a
    second pass over the sidecars cost seconds).
    """
    out_dir = Path(output_dir)
    versions: dict[str, str] = {}
    try:
        desc = json.loads((out_dir / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        desc = {}
    model = desc.get("NeuroharmonyModel") or {}
    if model.get("name") or model.get("path"):
        versions["model"] = str(model.get("name") or Path(str(model["path"])).name)
    if model.get("sha256"):
        versions["model_sha256"] = str(model["sha256"])
    for entry in desc.get("GeneratedBy") or []:
        if entry.get("Name") == "neuroharmony-bids" and entry.get("Version"):
            versions["neuroharmony-bids"] = str(entry["Version"])
    if scans is None:
        scans = _read_scan_versions(out_dir) if scan_sidecars else ()
    fs, mq = set(), set()
    for fs_label, mq_version in scans:
        if fs_label:
            fs.add(fs_label)
        if mq_version:
            mq.add(mq_version)
    if fs:
        versions["freesurfer"] = ", ".join(sorted(fs))
    if mq:
        versions["mriqc"] = ", ".join(sorted(mq))
    return versions


def _read_scan_versions(out_dir: Path) -> set[tuple[str | None, str | None]]:
    found = set()
    for path in sorted(out_dir.glob("sub-*/**/*_desc-raw_morph.json")):
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict):
            found.add(scan_versions(meta))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m neuroharmony_bids.reports.citation OUTPUT_DIR``: write logs/CITATION.*."""
    parser = argparse.ArgumentParser(
        prog="python -m neuroharmony_bids.reports.citation",
        description="Write OUTPUT_DIR/logs/CITATION.md and CITATION.bib for a finished "
        "neuroharmony-bids output folder (versions read from its files).",
    )
    parser.add_argument("output_dir", type=Path, help="a neuroharmony-bids output folder")
    args = parser.parse_args(argv)
    if not (args.output_dir / "dataset_description.json").is_file():
        print(f"error: {args.output_dir} is not a neuroharmony-bids output folder", file=sys.stderr)
        return 64
    logs = args.output_dir / "logs"
    write_citation(logs, versions_from_outputs(args.output_dir))
    print(f"wrote {logs / 'CITATION.md'} and {logs / 'CITATION.bib'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
