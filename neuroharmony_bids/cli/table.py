"""``neuroharmony``: harmonize, train and inspect models on tables (CSV/TSV), no BIDS needed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from neuroharmony_bids import __version__
from neuroharmony_bids.atomic import write_table
from neuroharmony_bids.cli.labels import parse_sex_mapping
from neuroharmony_bids.errors import DataError, NeuroharmonyError, UsageError


def read_table(path: str | Path) -> pd.DataFrame:
    """Read CSV or TSV by extension, keeping identifiers as text."""
    path = Path(path)
    if not path.is_file():
        raise NeuroharmonyError(f"input table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".txt"):
        raise UsageError(f"{path}: unknown table extension {suffix!r}; use .csv or .tsv")
    sep = "," if suffix == ".csv" else "\t"
    try:
        return pd.read_csv(
            path, sep=sep, dtype={"participant_id": str, "session_id": str},
            na_values=["n/a"], keep_default_na=True,
        )  # fmt: skip
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(
            f"{path}: cannot parse as {'CSV' if sep == ',' else 'TSV'}: {exc}"
        ) from None


def _parse_mapping(items: list[str] | None) -> dict[str, str] | None:
    return parse_sex_mapping(items) or None


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage; BIDS-Apps and sysexits say 64."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(64, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="neuroharmony",
        description="Harmonize FreeSurfer regional volumes from MRIQC IQMs (tables in, tables out).",
    )
    parser.add_argument("--version", action="version", version=f"neuroharmony {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    h = sub.add_parser("harmonize", help="harmonize a table of scans")
    h.add_argument("input", help="CSV/TSV: one row per scan (age, sex, IQMs, volumes)")
    h.add_argument("output", help="CSV/TSV to write (same rows and columns + nh_* flags)")
    h.add_argument("--model", default=None, help="model file (default: the shipped model)")
    h.add_argument(
        "--site-column",
        default=None,
        help="harmonize scans sharing this column's value together (several scans per scanner)",
    )
    h.add_argument("--sex-mapping", nargs="+", metavar="CODE=M|F", help="e.g. 1=M 2=F")

    t = sub.add_parser("train", help="train a dataset-specific model")
    t.add_argument("input", help="CSV/TSV with a site column, age, sex, IQMs and volumes")
    t.add_argument("model", help="model file to write (JSON)")
    t.add_argument("--site-column", required=True, help="column naming each scan's site/scanner")
    t.add_argument("--covariates", nargs="*", default=[], help="extra columns to protect (e.g. dx)")
    t.add_argument("--sex-mapping", nargs="+", metavar="CODE=M|F", help="e.g. 1=M 2=F")
    t.add_argument("--cv", action="store_true", help="compute leave-one-site-out figures (slow)")
    t.add_argument("--name", default=None, help="model name recorded in the file")

    i = sub.add_parser("info", help="print a model's identity, training data and metrics")
    i.add_argument("model", nargs="?", default=None, help="model file (default: shipped)")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _harmonize(args) -> None:
    from neuroharmony_bids.harmonize.apply import harmonize_table
    from neuroharmony_bids.harmonize.io import load_model

    out = Path(args.output)
    if out.suffix.lower() not in (".csv", ".tsv"):
        raise UsageError(f"{out}: output must end in .csv or .tsv")
    table = read_table(args.input)
    model = load_model(args.model)
    result = harmonize_table(
        table, model, site_column=args.site_column, sex_mapping=_parse_mapping(args.sex_mapping)
    )
    write_table(out, result)
    n_ood = int(result["nh_out_of_range"].sum())
    print(f"harmonized {len(result)} scans → {out} ({n_ood} flagged out of range)")


def _train(args) -> None:
    import hashlib

    from neuroharmony_bids.harmonize.io import save_model
    from neuroharmony_bids.harmonize.model import NeuroHarmonizer

    table = read_table(args.input)
    model = NeuroHarmonizer(covariates=tuple(args.covariates), cv=args.cv)
    model.fit(table, args.site_column, sex_mapping=_parse_mapping(args.sex_mapping))
    meta = {
        "name": args.name or Path(args.model).stem,
        "training_table": Path(args.input).name,
        "training_table_sha256": hashlib.sha256(Path(args.input).read_bytes()).hexdigest(),
        "site_column": args.site_column,
    }
    sha = save_model(model, args.model, meta)
    print(f"wrote {args.model} (sha256 {sha})")


def format_info(info: dict) -> str:
    """Human-readable model summary."""
    meta = info["metadata"]
    summ = info["training_summary"]
    lines = [
        f"model:            {meta.get('name', '?')}",
        f"file:             {info['path']}",
        f"sha256:           {info['sha256']}",
        f"format:           {info['format']} schema {info['schema_version']}, "
        f"written by neuroharmony-bids {info['package_version']}",
    ]
    for key in ("training_table", "training_table_sha256", "freesurfer_version", "mriqc_version"):
        if key in meta:
            lines.append(f"{key + ':':18}{meta[key]}")
    lines += [
        f"training cohort:  {summ['n_scans']} scans, {summ['n_sites']} sites, "
        f"ages {summ['age']['min']:.1f}-{summ['age']['max']:.1f}, "
        f"sex F={summ['sex'].get('F', 0)} M={summ['sex'].get('M', 0)}",
        f"sites:            {', '.join(f'{k} ({v})' for k, v in summ['sites'].items())}",
        f"protected:        {', '.join(info['design'])}",
        f"regions ({len(info['regions'])}):    {' '.join(info['regions'])}",
        f"IQMs (core):      {' '.join(info['iqms']['core'])}",
        f"IQMs (full):      {len(info['iqms']['full'])} IQMs",
    ]
    for name, cv in info["iqm_prior_cv"].items():
        lines.append(
            f"IQM prior {name:5}:  {cv['chosen']}, LOSO MSE gain vs no prior "
            f"{cv['gain_vs_zero']:+.3f} ({cv['calibrated_gain_vs_zero']:+.3f} after calibration)"
        )
    summary = info["cv_metrics"].get("summary") if info["cv_metrics"] else None
    if summary:
        lines.append("leave-one-site-out (sum of significant regions; mean AUC, R², MAE%, Δage r):")
        for method, m in summary.items():
            lines.append(
                f"  {method:12} sig={m['n_significant']:.0f} auc={m['auc']:.3f} r2={m['r2']:.3f} "
                f"mae%={m['mae_pct']:.2f} dage_r={m['age_r_change']:.3f}"
            )
    return "\n".join(lines)


def _info(args) -> None:
    from neuroharmony_bids.harmonize.io import model_info

    info = model_info(args.model)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else format_info(info))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        {"harmonize": _harmonize, "train": _train, "info": _info}[args.command](args)
    except NeuroharmonyError as exc:
        print(f"neuroharmony {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
