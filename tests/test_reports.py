"""Group and participant HTML reports on a simulated multi-site table and a real fitted model."""

from __future__ import annotations

import base64
import functools
import re
import sys

import pandas as pd
import pytest

from neuroharmony_bids.harmonize import metrics
from neuroharmony_bids.harmonize.apply import harmonize_table
from neuroharmony_bids.harmonize.features import ETIV, FS_ALIASES
from neuroharmony_bids.reports import write_group_report, write_participant_report
from neuroharmony_bids.reports.figures import key_region_series
from neuroharmony_bids.reports.group import (
    AUC_MAX_PER_SITE,
    AUC_SEED,
    build_group_report,
    shown_regions,
    shown_sites,
)
from neuroharmony_bids.testing.example import simulate_table

GROUP_SECTIONS = ("summary", "site-effects", "biology", "quality", "uncertainty", "model")
PARTICIPANT_SECTIONS = ("scan", "volumes", "iqms", "model")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@functools.lru_cache(maxsize=1)
def report_model():
    """(model, model_info): the shipped model, as the BIDS App uses it by default."""
    from neuroharmony_bids.harmonize.io import load_model, model_info

    return load_model(None), model_info(None)


@functools.lru_cache(maxsize=1)
def report_inputs() -> tuple[pd.DataFrame, pd.DataFrame, object, dict | None, pd.DataFrame]:
    """raw, harmonized, model, model_info, failed: what the group level hands the report."""
    model, info = report_model()
    raw = simulate_table(model=model)
    harmonized = harmonize_table(raw, model)
    failed = pd.DataFrame(
        {
            "participant_id": ["sub-099"],
            "session_id": ["n/a"],
            "reason": ["FreeSurfer aseg.stats missing: recon-all did not finish"],
        }
    )
    return raw, harmonized, model, info, failed


def _sections(html: str) -> dict[str, str]:
    parts = re.split(r'<section id="([^"]+)">', html)[1:]
    return {parts[i]: parts[i + 1].split("</section>")[0] for i in range(0, len(parts), 2)}


def _embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(d) for d in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


@pytest.fixture(scope="module")
def group_html(tmp_path_factory) -> str:
    raw, harmonized, model, info, failed = report_inputs()
    path = tmp_path_factory.mktemp("report") / "group_report.html"
    assert write_group_report(path, raw, harmonized, model, failed, model_info=info) == path
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".nhtmp-")]
    return path.read_text()


def test_group_report_has_every_section_and_embedded_figures(group_html):
    sections = _sections(group_html)
    assert set(GROUP_SECTIONS) <= set(sections)
    pngs = _embedded_pngs(group_html)
    # heatmap + key-structure box plots, age curves, IQM distributions
    assert len(pngs) == group_html.count("<img") >= 4
    assert all(p.startswith(PNG_MAGIC) and len(p) > 1000 for p in pngs)
    assert not re.search(r'(src|href)="(https?:|file:|//)', group_html)  # self-contained
    assert "<img" in sections["site-effects"] and "<img" in sections["biology"]
    assert "<img" in sections["quality"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="figures fork only on Linux")
def test_group_report_figures_drawn_in_child_processes_are_the_same_bytes(group_html, monkeypatch):
    """nprocs > 1 draws the figures in forked children while the report is built: the same
    HTML; children that die leave their figures to be drawn in-process, still the same."""
    import os

    import neuroharmony_bids.reports.figures as figures

    raw, harmonized, model, info, failed = report_inputs()
    args = (raw, harmonized, model, failed, info)
    drawn_here = []  # figures drawn in this process (a child's count stays in the child)
    real_png = figures._png
    monkeypatch.setattr(figures, "_png", lambda fig, *a: drawn_here.append(fig) or real_png(fig))
    assert build_group_report(*args, nprocs=2) == group_html
    assert drawn_here == []

    def crashing(fig, conn):  # in the child: dies without a word (killed, out of memory)
        os._exit(3)

    monkeypatch.setattr(figures, "_render_child", crashing)
    assert build_group_report(*args, nprocs=3) == group_html
    assert len(drawn_here) == len(_embedded_pngs(group_html)) == 4


def test_group_report_site_statistics_match_metrics(group_html):
    raw, harmonized, model, _, _ = report_inputs()
    regions = shown_regions(raw, harmonized, model)
    sites = raw["site"].to_numpy()
    cov = raw[["age", "sex"]]
    kw = {"max_per_site": AUC_MAX_PER_SITE, "seed": AUC_SEED, "tol": 1e-3}
    auc = [metrics.site_auc(t[regions].astype(float), sites, cov, **kw) for t in (raw, harmonized)]
    sig = [
        int(metrics.residual_site_effect(t[regions].astype(float), sites, cov)["significant"].sum())
        for t in (raw, harmonized)
    ]
    row = re.search(r"Site-classifier AUC.*?</tr>", _sections(group_html)["site-effects"], re.S)
    shown = [float(x) for x in re.findall(r'<td class="num">([0-9.]+)</td>', row.group(0))]
    assert shown == pytest.approx(auc, abs=6e-4)
    n_auc = len(metrics.subsample_per_site(sites, AUC_MAX_PER_SITE, AUC_SEED))
    said = f"all {len(sites)} scans" if n_auc == len(sites) else f"{n_auc} of {len(sites)} scans"
    assert said in row.group(0)
    row = re.search(r"significant site effect.*?</tr>", group_html, re.S)
    assert [int(x) for x in re.findall(r'<td class="num">(\d+)</td>', row.group(0))] == sig


def test_group_report_says_when_the_site_classifier_subsampled(monkeypatch):
    import neuroharmony_bids.reports.group as group_report

    raw, harmonized, model, _, _ = report_inputs()
    regions = shown_regions(raw, harmonized, model)
    sites = raw["site"].astype(str)
    monkeypatch.setattr(group_report, "AUC_MAX_PER_SITE", 3)
    block = group_report._metrics_block(raw, harmonized, regions, sites)
    n_auc = len(metrics.subsample_per_site(sites.to_numpy(), 3, AUC_SEED))
    assert n_auc < len(sites)
    assert f"{n_auc} of {len(sites)} scans: at most 3 per site, drawn at random with seed" in block


def test_group_report_lists_out_of_range_and_failed_scans(group_html):
    _, harmonized, _, _, failed = report_inputs()
    quality = _sections(group_html)["quality"]
    flagged = harmonized.loc[harmonized["nh_out_of_range"] == 1, "participant_id"]
    assert len(flagged) >= 1  # the simulated noisy scan at least
    for pid in flagged:
        assert pid in quality
    assert "sub-099" in quality and "recon-all did not finish" in quality


def test_group_report_model_section(group_html):
    _, _, model, info, _ = report_inputs()
    section = _sections(group_html)["model"]
    assert "Training cohort" in section
    assert f"{model.training_summary_['n_scans']}" in section
    assert info["sha256"] in section and info["metadata"]["name"] in section
    assert "Leave-one-site-out" in section and "single_scan" in section


def test_model_info_has_one_owner_rendered_as_html_and_text(group_html):
    """The report's model section and `neuroharmony info` show the same rows."""
    import html as html_lib

    from neuroharmony_bids.cli.table import format_info
    from neuroharmony_bids.reports.model_summary import gather_model_info, model_rows

    model, info = report_model()
    text = format_info(info)
    section = html_lib.unescape(_sections(group_html)["model"])
    rows = model_rows(gather_model_info(model, info))
    assert [label for label, _ in rows["model"][:2]] == ["model", "description"]
    for block in ("model", "training", "loso"):
        assert rows[block]
        for label, value in rows[block]:
            if block != "training" or not label.startswith(("regions", "training age")):
                assert f"{label}" in text and value in text, (label, value)
            assert label in section and value in section, (label, value)
    # a region list is folded away in the HTML, not dropped
    assert re.search(r"<details><summary>regions \(\d+\)</summary>", section)


def test_single_site_is_explained_not_tested():
    raw, harmonized, model, info, _ = report_inputs()
    one = raw["site"] == raw["site"].iloc[0]
    html = build_group_report(raw[one], harmonized[one], model, model_info=info)
    section = _sections(html)["site-effects"]
    assert "come from one site" in section
    assert "Site-classifier AUC" not in section
    assert "<img" in _sections(html)["biology"]


def test_site_from_scanner_metadata_or_absent():
    raw, harmonized, model, info, _ = report_inputs()
    sites, how = shown_sites(raw.drop(columns="site"))
    assert "scanner metadata" in how and sites.nunique() == 4
    scanner = ["site", "Manufacturer", "ManufacturersModelName"]
    html = build_group_report(
        raw.drop(columns=scanner), harmonized.drop(columns=scanner), model, model_info=info
    )
    assert "No site information" in _sections(html)["site-effects"]


def test_freesurfer6_spelling_is_recognised():
    raw, harmonized, model, _, _ = report_inputs()
    fs6 = {v: k for k, v in FS_ALIASES.items() if k.endswith("Thalamus-Proper")}
    renamed = raw.rename(columns=fs6)
    assert "Left-Thalamus-Proper" in shown_regions(renamed, harmonized.rename(columns=fs6), model)
    keys = key_region_series(renamed)
    assert "Thalamus" in keys
    expected = raw["Left-Thalamus"] + raw["Right-Thalamus"]
    assert keys["Thalamus"].to_numpy() == pytest.approx(expected.to_numpy())


def test_participant_report(tmp_path):
    raw, harmonized, model, info, _ = report_inputs()
    flagged_iqms = [
        [f for f in str(v).split(";") if f in model.iqm_range_]
        for v in harmonized["nh_out_of_range_features"]
    ]
    i = next(k for k, names in enumerate(flagged_iqms) if names)  # the simulated noisy scan
    path = write_participant_report(
        tmp_path / "sub.html", raw.iloc[i], harmonized.iloc[i], model, model_info=info
    )
    html = path.read_text()
    sections = _sections(html)
    assert set(PARTICIPANT_SECTIONS) <= set(sections)
    svgs = [
        base64.b64decode(d).decode()
        for d in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html)
    ]
    assert len(svgs) == html.count("<img") == 2
    assert all(s.startswith("<svg") and s.endswith("</svg>") for s in svgs)
    assert sections["volumes"].count("<img") == 1 and sections["iqms"].count("<img") == 1
    # one row per region in the volume chart, one per IQM in the IQM chart
    assert svgs[0].count("<circle") >= 2 * len(model.regions_) - 5
    # every IQM the model flagged is highlighted in the IQM table
    flagged = flagged_iqms[i]
    for name in flagged:
        assert re.search(rf'<tr class="flag"><td>{name}</td>', sections["iqms"])
    # the reference range shown is the model's for this age/sex/eTIV
    ref = model.reference_range(raw.iloc[i]["age"], raw.iloc[i]["sex"], raw.iloc[i][ETIV])
    region = "Left-Hippocampus"
    cells = re.search(rf"<td>{region}</td>(.*?)</tr>", sections["volumes"], re.S).group(1)
    numbers = [float(x) for x in re.findall(r'<td class="num">([-0-9.e+]+)</td>', cells)]
    assert numbers[2:5] == pytest.approx(ref.loc[region, ["mean", "lower", "upper"]], rel=1e-3)
    # the correction, its share of the deviation from the reference mean, its posterior SD
    raw_v, harm_v = float(raw.iloc[i][region]), float(harmonized.iloc[i][region])
    assert numbers[:2] == pytest.approx([raw_v, harm_v], rel=1e-3)
    assert numbers[5] == pytest.approx(raw_v - harm_v, rel=1e-2, abs=0.05)
    share = 100 * (raw_v - harm_v) / (raw_v - ref.loc[region, "mean"])
    assert numbers[6] == pytest.approx(share, rel=1e-2, abs=0.05)
    sd = model.scanner_uncertainty(1).loc[region, "sd_mm3"]
    assert numbers[7] == pytest.approx(sd, rel=1e-3)
    assert "attributed to the scanner" in sections["volumes"]


def test_group_report_says_how_sure_each_scanner_is(group_html):
    raw, _, model, _, _ = report_inputs()
    section = _sections(group_html)["uncertainty"]
    sites = raw["site"].value_counts().sort_index()
    for site, n in sites.items():
        row = re.search(rf"<td>{re.escape(str(site))}</td>(.*?)</tr>", section, re.S).group(1)
        numbers = [float(x) for x in re.findall(r'<td class="num">([-0-9.e+]+)</td>', row)]
        assert numbers[0] == n
        joint = model.scanner_uncertainty(int(n))
        assert numbers[2] == pytest.approx(joint["sd_pct"].median(), rel=1e-3)
        assert numbers[-1] == model.scans_to_halve(int(n))


def test_model_card_keeps_hostile_names_literal(tmp_path):
    """Site names and the dataset path come from user files: they stay literal in the card."""
    from types import SimpleNamespace

    from markdown_it import MarkdownIt

    from neuroharmony_bids.reports.model_card import model_card_text

    hostile = "A | x |\n# Owned [click](javascript:alert(1)) <script>alert(1)</script>"
    table = pd.DataFrame(
        {"site": [hostile, hostile, "<img src=x onerror=alert(1)>"], "age": [20.0, 30, 40],
         "sex": ["M", "F", "*F*"]}
    )  # fmt: skip
    model = SimpleNamespace(profile_weight=1.0, regions_=["Left-Hippocampus"], iqms_=["cjv"])
    md = model_card_text(
        tmp_path / "m`x.json", "ab|`cd", model, table, "/d/<b>x</b>", "Manufacturer"
    )
    html = MarkdownIt("commonmark").enable("table").render(md)
    for active in ("<script", "<img", "<b>", 'href="javascript', "<h1>Owned", "<em>"):
        assert active not in html, active
    table_html = html[html.index("<table>") : html.index("</table>")]
    assert table_html.count("<tr>") == 1 + 2  # header + the two sites, none split
    for row in table_html.split("<tr>")[2:]:
        assert row.count("<td>") == 2, row
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, not run


def test_participant_report_is_deterministic(tmp_path, monkeypatch):
    """Same inputs, same bytes, whatever the clock says; a date only from SOURCE_DATE_EPOCH."""
    import datetime as real_dt

    import neuroharmony_bids.reports.html as html_mod

    raw, harmonized, model, info, _ = report_inputs()

    def write(name: str) -> bytes:
        path = tmp_path / name
        write_participant_report(path, raw.iloc[0], harmonized.iloc[0], model, model_info=info)
        return path.read_bytes()

    class Clock(real_dt.datetime):
        shift = 0

        @classmethod
        def now(cls, tz=None):
            cls.shift += 3
            return real_dt.datetime(2030, 1, 1, tzinfo=tz) + real_dt.timedelta(days=cls.shift)

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.setattr(html_mod._dt, "datetime", Clock)
    first, second = write("a.html"), write("b.html")
    assert first == second
    assert not re.search(rb"\d{4}-\d\d-\d\d \d\d:\d\d UTC", first)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    stamped = write("c.html")
    assert b"on 2023-11-14 22:13 UTC." in stamped and stamped == write("d.html")
