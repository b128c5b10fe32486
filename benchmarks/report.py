"""Benchmark JSON -> the overhead tables of ``docs/overhead.md`` and ``docs/img/overhead_*.png``.

    tox -e bench                           # writes .benchmarks/<machine>/NNNN_bench.json
    python benchmarks/report.py            # the newest JSON there -> docs/overhead.md + plots
    python benchmarks/report.py --json a.json b.json   # several runs merged (a later run's row wins)

Ratios compare rows of the same run (same machine, same load). Each is given for the fastest
round (min / min), the median round and the slowest round (max / max). Only the part of
``docs/overhead.md`` between the ``generated`` markers is rewritten; the analysis around it is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- generated:start -->", "<!-- generated:end -->"
TARGETS = {
    "engine": ("exact batched engine vs one hooked full forward per intervention", ">=", 20.0),
    "training": ("CSAE (full) training wall time vs TopK", "<=", 1.3),
    "evals": ("NCES eval time vs SAEBench core, same SAE", "<=", 2.0),
}
"""DESIGN §9 targets: (what, direction, bound)."""


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if "benchmarks" not in data:
        raise ValueError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks' list).")
    return data


def newest_json(storage: Path) -> Path:
    found = sorted(storage.rglob("*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"No benchmark JSON under {storage}; run `tox -e bench` first.")
    return found[-1]


def _rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in data["benchmarks"]}


def _t(b: dict[str, Any]) -> tuple[float, float, float, int]:
    s = b["stats"]
    return s["min"], s["median"], s["max"], s["rounds"]


def ratio(num: dict[str, Any], den: dict[str, Any]) -> tuple[float, float, float]:
    """(min, median, max) of ``num`` over ``den``, round statistic by round statistic."""
    a, b = _t(num), _t(den)
    return a[0] / b[0], a[1] / b[1], a[2] / b[2]


def _fmt_r(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.2f} / **{r[1]:.2f}** / {r[2]:.2f}"


def _status(r: tuple[float, float, float], key: str) -> str:
    _, op, bound = TARGETS[key]
    ok = r[1] >= bound if op == ">=" else r[1] <= bound
    return f"{'met' if ok else '**missed**'} ({op} {bound:g}×)"


def summarize(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    rows = _rows(data)
    out: dict[str, list[dict[str, Any]]] = {"engine": [], "training": [], "evals": [], "scaling": [], "times": []}
    naive = rows.get("test_bench_naive_loop")
    if naive:
        for name, label in (("test_bench_engine_exact[reuse_kv]", "engine, KV reuse + truncation (default)"),
                            ("test_bench_engine_exact[truncate]", "engine, truncation only"),
                            ("test_bench_attribution", "attribution (one backward, every feature x position)")):
            if name in rows:
                out["engine"].append({"label": f"naive / {label}", "ratio": ratio(naive, rows[name]),
                                      "target": "engine" if "default" in label else None})
    topk = rows.get("test_bench_training[topk]")
    if topk:
        for name, b in rows.items():
            if b.get("group") == "training" and name != "test_bench_training[topk]":
                variant = b["params"]["variant"] if b.get("params") else "csae-e2e (exact end-to-end KL)"
                r = ratio(b, topk)
                sae_r = (b["extra_info"].get("sae_seconds", 0) / topk["extra_info"]["sae_seconds"]
                         if topk["extra_info"].get("sae_seconds") else None)
                out["training"].append({"label": f"{variant} / topk", "ratio": r, "sae_ratio": sae_r,
                                        "target": "training" if variant == "csae-full" else None})
        pool, full = rows.get("test_bench_gradient_pool"), rows.get("test_bench_training[csae-full]")
        if pool and full:
            p = pool["stats"]["median"]
            r = tuple((full["stats"][k] + p) / topk["stats"][k] for k in ("min", "median", "max"))
            out["training"].append({"label": "(csae-full + its gradient-pool harvest) / topk", "ratio": r,
                                    "sae_ratio": None, "target": None})
    for settings in ("small", "default"):
        core, nces = rows.get(f"test_bench_eval[core-{settings}]"), rows.get(f"test_bench_eval[nces-{settings}]")
        if core and nces:
            out["evals"].append({"label": f"NCES / core ({settings} settings)", "ratio": ratio(nces, core),
                                 "target": "evals" if settings == "default" else None,
                                 "interventions": nces["extra_info"].get("interventions")})
    base = rows.get("test_bench_nces_scaling[base]")
    if base:
        for b in rows.values():
            if b.get("group") == "nces-scaling":
                out["scaling"].append({"label": b["params"]["row"], "ratio": ratio(b, base),
                                       "seconds": b["stats"]["median"], "info": b["extra_info"]})
    for name, b in sorted(rows.items(), key=lambda kv: (kv[1].get("group") or "", kv[0])):
        mn, md, mx, n = _t(b)
        out["times"].append({"group": b.get("group"), "name": name, "min": mn, "median": md, "max": mx, "rounds": n})
    return out


def plots(summary: dict[str, list[dict[str, Any]]], img: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    panels = [(k, summary[k]) for k in ("engine", "training", "evals") if summary[k]]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
        for ax, (key, items) in zip(axes[0], panels, strict=True):
            labels = [i["label"].split(" / ")[0 if key != "engine" else 1][:28] for i in items]
            med = [i["ratio"][1] for i in items]
            err = [[i["ratio"][1] - i["ratio"][0] for i in items], [i["ratio"][2] - i["ratio"][1] for i in items]]
            ax.barh(range(len(items)), med, xerr=[[max(0, e) for e in err[0]], [max(0, e) for e in err[1]]], capsize=3)
            ax.set_yticks(range(len(items)), labels, fontsize=7)
            ax.axvline(TARGETS[key][2], color="r", linestyle="--", linewidth=1, label=f"target {TARGETS[key][1]} {TARGETS[key][2]:g}×")
            if key != "engine":
                ax.axvline(1.0, color="k", linewidth=0.8)
            ax.set_xscale("log" if key == "engine" else "linear")
            ax.set_xlabel({"engine": "speed-up vs naive", "training": "time / TopK", "evals": "NCES time / core time"}[key])
            ax.legend(fontsize=7)
        fig.suptitle("Overhead ratios (median round; bars: min–max)", fontsize=10)
        made.append(_save(fig, img / "overhead_ratios.png"))
    if summary["scaling"]:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        items = summary["scaling"]
        ax.barh(range(len(items)), [i["ratio"][1] for i in items])
        ax.set_yticks(range(len(items)), [i["label"] for i in items], fontsize=8)
        ax.axvline(1.0, color="k", linewidth=0.8)
        ax.set_xlabel("NCES time / base")
        ax.set_title("NCES cost scaling (one factor at a time)", fontsize=10)
        made.append(_save(fig, img / "overhead_nces_scaling.png"))
    return made


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def render(summary: dict[str, list[dict[str, Any]]], data: dict[str, Any], sources: list[Path],
           images: list[Path]) -> str:
    mi = data.get("machine_info", {})
    L = [START, "",
         f"*Generated by `python benchmarks/report.py` from {', '.join(f'`{p.name}`' for p in sources)} "
         f"({data.get('datetime', '?')}, "
         f"{mi.get('cpu', {}).get('brand_raw', mi.get('processor', '?'))}, {mi.get('cpu', {}).get('count', '?')} "
         "cores). Ratios: fastest round / median round / slowest round.*", ""]
    L += ["### Against the DESIGN §9 targets", "", "| target | measured ratio (min / median / max) | status |",
          "|---|---|---|"]
    for key in ("engine", "training", "evals"):
        hit = [i for i in summary[key] if i.get("target") == key]
        what = TARGETS[key][0]
        if not hit and key == "evals" and summary[key]:  # default settings not run: the small ones, labelled
            hit = summary[key][:1]
            what += f" (measured: {hit[0]['label'].split('(')[-1].rstrip(')')}; default settings not run)"
        if hit:
            L.append(f"| {what} | {_fmt_r(hit[0]['ratio'])} | {_status(hit[0]['ratio'], key)} |")
        else:
            L.append(f"| {what} | not measured in this run | — |")
    for key, title in (("engine", "Engine"), ("training", "Training (same tokens, same steps)"), ("evals", "Evals")):
        if not summary[key]:
            continue
        L += ["", f"### {title}", "", "| ratio | min / median / max |" + (" SAE-step time only |" if key == "training" else ""),
              "|---|---|" + ("---|" if key == "training" else "")]
        for i in summary[key]:
            extra = ""
            if key == "training":
                extra = f" {i['sae_ratio']:.2f} |" if i.get("sae_ratio") else " — |"
            L.append(f"| {i['label']} | {_fmt_r(i['ratio'])} |{extra}")
    if summary["scaling"]:
        L += ["", "### NCES cost scaling", "", "| change from base | time / base (median) | median s | interventions |",
              "|---|---|---|---|"]
        for i in summary["scaling"]:
            L.append(f"| {i['label']} | {i['ratio'][1]:.2f} | {i['seconds']:.1f} | {i['info'].get('interventions', '—')} |")
    L += ["", "### Raw times (s)", "", "| group | benchmark | min | median | max | rounds |", "|---|---|---|---|---|---|"]
    for t in summary["times"]:
        L.append(f"| {t['group']} | `{t['name']}` | {t['min']:.2f} | {t['median']:.2f} | {t['max']:.2f} | {t['rounds']} |")
    L += [""] + [f"![{p.stem}](img/{p.name})" for p in images] + ["", END]
    return "\n".join(L)


def merge(paths: list[Path]) -> dict[str, Any]:
    """One benchmark JSON from several (e.g. the engine group run apart from the others); a row
    present in several is taken from the later file. Machine info is the last file's."""
    merged: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        data = load(path)
        merged = {**data, "benchmarks": []}
        rows.update({b["name"]: b for b in data["benchmarks"]})
    merged["benchmarks"] = list(rows.values())
    return merged


def write(json_paths: list[Path], docs: Path) -> Path:
    data = merge(json_paths)
    summary = summarize(data)
    images = plots(summary, docs / "img")
    block = render(summary, data, json_paths, images)
    doc = docs / "overhead.md"
    text = doc.read_text() if doc.exists() else "# Overhead of causal verification\n\n" + START + END + "\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(doc)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, nargs="+", default=None,
                        help="pytest-benchmark JSON(s) [default: the newest under --storage]")
    parser.add_argument("--storage", type=Path, default=REPO / ".benchmarks")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    paths = args.json or [newest_json(args.storage)]
    doc = write(paths, args.docs)
    sys.stdout.write(f"Wrote {doc} from {', '.join(map(str, paths))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
