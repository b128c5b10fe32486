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
"""The project's performance targets (issue 13 and before): (what, direction, bound)."""
DTYPES = ("float32", "bfloat16")
HARVEST_TOKENS_S, HARVEST_SPEEDUP, ENGINE_SPEEDUP, ENGINE_PEAK = 9000.0, 5.0, 3.0, 0.40
"""Issue 13's targets: bf16 harvest tokens/s at layer 6 and its speed-up over float32; the
engine's bf16 speed-up over float32 and its fraction of the same-dtype matmul peak."""


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


def _by_dtype(rows: dict[str, dict[str, Any]], group: str, **match: Any) -> dict[str, dict[str, Any]]:
    """dtype -> the row of ``group`` whose extra_info matches ``match``."""
    return {b["extra_info"]["dtype"]: b for b in rows.values()
            if b.get("group") == group and "dtype" in b.get("extra_info", {})
            and all(b["extra_info"].get(k) == v for k, v in match.items())}


def peaks(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    """dtype -> the run's matmul peak in FLOP/s: the fastest round of the fastest ``matmul-peak``
    row of that dtype (on a shared machine the best round is the least disturbed one)."""
    out: dict[str, float] = {}
    for b in rows.values():
        if b.get("group") == "matmul-peak":
            dt, rate = b["extra_info"]["dtype"], b["extra_info"]["flops"] / b["stats"]["min"]
            out[dt] = max(out.get(dt, 0.0), rate)
    return out


def _achieved(b: dict[str, Any], peak: dict[str, float]) -> tuple[float | None, float | None]:
    """(GFLOP/s, fraction of the same-dtype peak) of a row with ``extra_info["flops"]``, both
    from fastest rounds (best round vs best round: the least load-disturbed pair)."""
    flops = b.get("extra_info", {}).get("flops")
    if not flops:
        return None, None
    rate = flops / b["stats"]["min"]
    p = peak.get(b["extra_info"].get("dtype", "float32"))
    return rate / 1e9, (rate / p if p else None)


def summarize_dtype(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The float32-vs-bfloat16 tables: matmul peak, harvest, training steps, engine, core."""
    peak = peaks(rows)
    out: dict[str, Any] = {"peak": [], "harvest": [], "training": [], "engine": [], "evals": []}
    for shape in sorted({b["extra_info"]["shape"] for b in rows.values() if b.get("group") == "matmul-peak"}):
        got = _by_dtype(rows, "matmul-peak", shape=shape)
        out["peak"].append({"shape": shape, **{dt: got[dt]["extra_info"]["flops"]
                                                / got[dt]["stats"]["min"] / 1e9 for dt in got}})
    for key, group, match in (("harvest", "harvest", {}), ("engine", "engine-dtype", {})):
        got = _by_dtype(rows, group, **match)
        for dt in DTYPES:
            if dt in got:
                b = got[dt]
                gflops, frac = _achieved(b, peak)
                rate = (b["extra_info"].get("tokens_per_s_median")
                        or b["extra_info"]["interventions"] / b["stats"]["median"])
                out[key].append({"dtype": dt, "rate": rate, "seconds": b["stats"]["median"],
                                 "gflops": gflops, "frac": frac})
        if all(dt in got for dt in DTYPES):
            out[key + "_speedup"] = ratio(got["float32"], got["bfloat16"])
    archs = sorted({b["extra_info"]["architecture"] for b in rows.values() if b.get("group") == "training-dtype"},
                   key=lambda a: ["relu", "topk", "jumprelu", "csae"].index(a) if a in ("relu", "topk", "jumprelu", "csae") else 9)
    for arch in archs:
        got = _by_dtype(rows, "training-dtype", architecture=arch)
        item: dict[str, Any] = {"arch": arch}
        for dt, b in got.items():
            gflops, frac = _achieved(b, peak)
            item[dt] = {"ms": b["extra_info"]["ms_per_step"], "gflops": gflops, "frac": frac,
                        "mm_share": b["extra_info"].get("matmul_time_share")}
        if all(dt in got for dt in DTYPES):
            item["speedup"] = ratio(got["float32"], got["bfloat16"])
        out["training"].append(item)
    core, core_bf16 = rows.get("test_bench_eval_core_dtype[float32]"), rows.get("test_bench_eval_core_dtype[bfloat16]")
    if core and core_bf16:
        out["evals"].append({"label": "core fp32 / core bf16 (small settings): bf16 speed-up",
                             "ratio": ratio(core, core_bf16)})
    return out


def _target_rows(d: dict[str, Any]) -> list[str]:
    def status(ok: bool, what: str) -> str:
        return f"{'met' if ok else '**missed**'} ({what})"

    L = []
    bf = {i["dtype"]: i for i in d["harvest"]}
    if "bfloat16" in bf:
        v = bf["bfloat16"]["rate"]
        L.append(f"| harvest tokens/s, bf16, layer 6 | {v:,.0f} | {status(v >= HARVEST_TOKENS_S, f'>= {HARVEST_TOKENS_S:,.0f}')} |")
    if "harvest_speedup" in d:
        r = d["harvest_speedup"]
        L.append(f"| harvest speed-up, bf16 vs fp32 | {_fmt_r(r)} | {status(r[1] >= HARVEST_SPEEDUP, f'>= {HARVEST_SPEEDUP:g}×')} |")
    if "engine_speedup" in d:
        r = d["engine_speedup"]
        L.append(f"| engine speed-up, bf16 vs fp32 (measured only: the product runs the engine in fp32) | "
                 f"{_fmt_r(r)} | {status(r[1] >= ENGINE_SPEEDUP, f'>= {ENGINE_SPEEDUP:g}×')} |")
    for i in d["engine"]:
        if i["frac"] is not None:
            L.append(f"| engine fraction of the {i['dtype']} matmul peak | {i['frac']:.0%} | "
                     f"{status(i['frac'] >= ENGINE_PEAK, f'>= {ENGINE_PEAK:.0%}')} |")
    return L


def render_dtype(d: dict[str, Any]) -> list[str]:
    """Markdown for :func:`summarize_dtype` (empty when the run has no dtype rows)."""
    if not any(d[k] for k in ("peak", "harvest", "training", "engine", "evals")):
        return []
    pct = lambda f: f"{f:.0%}" if f is not None else "—"  # noqa: E731
    L = ["", "### float32 vs bfloat16 (issue 13)", "",
         "Speed-ups are float32 time / bf16 time (of the fastest / median / slowest rounds); achieved GFLOP/s count "
         "matmul FLOPs only (`benchmarks/flops.py`) over a row's fastest round, and the fraction of "
         "peak divides by the fastest `matmul-peak` round of the same dtype in the same run. On a shared "
         "machine the peak rows and the others run minutes apart: a fraction above 100% means the "
         "load fell in between (the row's FLOP rate is then compared with a depressed peak)."]
    targets = _target_rows(d)
    if targets:
        L += ["", "| issue 13 target | measured | status |", "|---|---|---|", *targets]
    if d["peak"]:
        L += ["", "**Matmul peak** (`torch.mm`, fastest round)", "",
              "| product | float32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |", "|---|---|---|---|"]
        for i in d["peak"]:
            f, b = i.get("float32"), i.get("bfloat16")
            L.append(f"| {i['shape']} | {f or 0:.0f} | {b or 0:.0f} | {(b / f) if f and b else 0:.2f} |")
    for key, title, unit in (("harvest", "Harvest** (layer 6, 32 contexts × 128 per forward)", "tokens/s"),
                             ("engine", "Engine** (KV reuse + truncation, W = 4, 32 interventions)",
                              "interventions/s")):
        if d[key]:
            L += ["", f"**{title}", "", f"| model dtype | {unit} | median s | GFLOP/s | fraction of peak |",
                  "|---|---|---|---|---|"]
            for i in d[key]:
                L.append(f"| {i['dtype']} | {i['rate']:,.1f} | {i['seconds']:.2f} | "
                         f"{i['gflops'] or 0:.1f} | {pct(i['frac'])} |")
            if key + "_speedup" in d:
                L.append(f"| bf16 speed-up | {_fmt_r(d[key + '_speedup'])} | | | |")
    if d["training"]:
        L += ["", "**SAE training steps** (d_sae 2048, batch 4096; `TrainConfig.dtype`: autocast bf16 matmuls, "
              "fp32 master weights; FLOPs `10 · B · d_in · d_sae` per step; matmul share = "
              "`aten::mm/addmm/bmm` self time / all self time of one profiled step)", "",
              "| architecture | fp32 ms/step | bf16 ms/step | bf16 speed-up | fp32 fraction of peak | "
              "bf16 fraction of peak | matmul share fp32 / bf16 |", "|---|---|---|---|---|---|---|"]
        for i in d["training"]:
            f, b = i.get("float32", {}), i.get("bfloat16", {})
            share = " / ".join(pct(x.get("mm_share")) for x in (f, b))
            L.append(f"| {i['arch']} | {f.get('ms', 0):.0f} | {b.get('ms', 0):.0f} | "
                     f"{_fmt_r(i['speedup']) if 'speedup' in i else '—'} | {pct(f.get('frac'))} | "
                     f"{pct(b.get('frac'))} | {share} |")
    if d["evals"]:
        L += ["", "**Evals by dtype**", "", "| ratio | fastest / median / slowest rounds |", "|---|---|"]
        L += [f"| {i['label']} | {_fmt_r(i['ratio'])} |" for i in d["evals"]]
    return L


def summarize(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    rows = _rows(data)
    out: dict[str, Any] = {"engine": [], "training": [], "evals": [], "scaling": [], "times": []}
    out["dtype"] = summarize_dtype(rows)
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


def plots(summary: dict[str, Any], img: Path) -> list[Path]:
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


def render(summary: dict[str, Any], data: dict[str, Any], sources: list[Path],
           images: list[Path]) -> str:
    mi = data.get("machine_info", {})
    L = [START, "",
         f"*Generated by `python benchmarks/report.py` from {', '.join(f'`{p.name}`' for p in sources)} "
         f"({data.get('datetime', '?')}, "
         f"{mi.get('cpu', {}).get('brand_raw', mi.get('processor', '?'))}, {mi.get('cpu', {}).get('count', '?')} "
         "cores). Ratios: fastest round / median round / slowest round.*", ""]
    L += ["### Against the performance targets", "", "| target | measured ratio (fastest / median / slowest rounds) | status |",
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
        L += ["", f"### {title}", "", "| ratio | fastest / median / slowest rounds |" + (" SAE-step time only |" if key == "training" else ""),
              "|---|---|" + ("---|" if key == "training" else "")]
        for i in summary[key]:
            extra = ""
            if key == "training":
                extra = f" {i['sae_ratio']:.2f} |" if i.get("sae_ratio") else " — |"
            L.append(f"| {i['label']} | {_fmt_r(i['ratio'])} |{extra}")
    L += render_dtype(summary["dtype"])
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
