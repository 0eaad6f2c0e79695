"""`leantrain report`: HTML (self-contained) and Markdown reports of a run or an ablation."""
from __future__ import annotations


def register(subparsers) -> dict:
    parser = subparsers.add_parser("report", help="write report.html (self-contained) and report.md for a run or an ablation")
    parser.add_argument("path", metavar="RUN_DIR|ABLATION_DIR")
    parser.add_argument("--output", metavar="DIR", help="where to write the report (default: the directory itself)")
    return {"report": _report}


def _report(args) -> int:
    from leantrain.report import write_report

    written = write_report(args.path, args.output)
    print(f"report: {written['html']} (Markdown: {written['markdown']})")
    return 0
