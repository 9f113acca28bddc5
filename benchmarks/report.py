"""The report: the issue's targets, judged from the results, and the markdown.

`evaluate_targets` gives one line per target of the performance issue: met, missed, or
not measured (`None`) with the reason. `to_markdown` renders the results (the JSON
the script writes) as the report that goes into BENCHMARKS.md; `write_section`
replaces the marked CPU or GPU part of that file with it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from harness import find
from sections import DP_GHOST, DP_VMAP, LOOP, NOOP_LOOP, SCAN, STEP_SECTIONS


def _row(section: dict | None, variant: str) -> dict | None:
    return find(section["rows"], variant) if section else None


def _peak(sections: dict[str, dict]) -> float | None:
    """The float32 matmul peak of the `peak` section, where it ran: the fastest library's
    (JAX's where only it was measured)."""
    peak = (sections.get("peak") or {}).get("peak_gflops") or {}
    return peak.get("float32_any") or peak.get("float32")


def scan_bound(digits: dict, peak_gflops: float | None) -> dict | None:
    """What limits epoch-as-scan vs the per-step loop.

    With `o` the loop's extra cost per step (loop − scan) and `c` the scan's step,
    `loop/scan = 1 + o/c`: reaching 5× needs `c ≤ o/4`. Reports `o`, the part of it
    that is bare dispatch (the no-op row), `c`, and the step's matmul FLOPs at the
    measured matmul peak (a floor on `c`).
    """
    scan, loop, noop = (_row(digits, v) for v in (SCAN, LOOP, NOOP_LOOP))
    n = digits.get("steps_per_epoch")
    if scan is None or loop is None or noop is None or not n:
        return None
    extra_us = (loop["median_s"] - scan["median_s"]) / n * 1e6
    out = {"loop_extra_us_per_step": extra_us,
           "dispatch_overhead_us_per_step": noop["median_s"] / n * 1e6,
           "scan_us_per_step": scan["median_s"] / n * 1e6,
           "scan_us_per_step_needed_for_5x": extra_us / 4}
    if peak_gflops:
        out["matmul_floor_us_per_step"] = digits["flops_per_step"] / (peak_gflops * 1e9) * 1e6
    return out


# --------------------------------------------------------------------------- #
# Targets
# --------------------------------------------------------------------------- #


def _iqr(row: dict, key: str) -> str:
    q = row.get(key + "_iqr")
    return f" (median of per-round ratios; IQR {q[0]:.3f}–{q[1]:.3f})" if q else ""


def evaluate_targets(sections: dict[str, dict]) -> list[dict]:
    """Each target of the issue: value, met (True/False) or None when not measured."""
    out = []

    def add(name: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "met": met, "detail": detail})

    for s in STEP_SECTIONS:
        if s not in sections:
            continue
        r = _row(sections.get(s), "fdl")
        if r is None or r.get("vs_fastest_jax_peer") is None:
            add(f"{s}: fdl step ≤ 1.0× fastest JAX peer", None,
                "fdl row missing" if r is None else "no JAX peer measured")
        else:
            v = r["vs_fastest_jax_peer"]
            add(f"{s}: fdl step ≤ 1.0× fastest JAX peer", v <= 1.0,
                f"{v:.3f}× {r['fastest_jax_peer']}{_iqr(r, 'vs_fastest_jax_peer')}")
    for s in STEP_SECTIONS:
        r = _row(sections.get(s), "fdl")
        if r is None or r.get("vs_fdl_autodiff") is None:
            continue
        v = r["vs_fdl_autodiff"]
        add(f"{s}: manual rules ≤ 1.02× fdl autodiff", v <= 1.02,
            f"{v:.3f}×{_iqr(r, 'vs_fdl_autodiff')}")
    r = _row(sections.get("C"), "fdl")
    if "C" in sections and (r is None or r.get("pct_of_peak") is None):
        add("C: fdl ≥ 80% of float32 matmul peak", None, "no peak measured")
    elif r is not None:
        add("C: fdl ≥ 80% of float32 matmul peak", r["pct_of_peak"] >= 80.0,
            f"{r['pct_of_peak']:.1f}%")
    for s in ("CNN", "LSTM", "transformer"):
        r = _row(sections.get(s), "fdl")
        if r is not None and r.get("vs_torch") is not None:
            v = r["vs_torch"]
            add(f"{s}: fdl step ≤ 1.2× PyTorch eager", v <= 1.2,
                f"{v:.2f}×{_iqr(r, 'vs_torch')}")
    _dp_targets(sections.get("dp"), add)
    _digits_targets(sections, add)
    _perex_targets(sections.get("perex"), add)
    return out


def _dp_targets(d: dict | None, add: Any) -> None:
    if d is None:
        return
    for label in ("CNN", "transformer"):
        name = f"{label}: DP-SGD step (ghost norms) ≤ 2× an ordinary step"
        r = _row(d, f"{label}: {DP_GHOST}")
        if r is None or r.get("vs_plain_step") is None:
            add(name, None, "not measured" + (" (fdl's transformer blocks pending)"
                                              if label == "transformer" else ""))
            continue
        vm = _row(d, f"{label}: {DP_VMAP}")
        extra = (f"; the vmap-materialised DP-SGD step: {vm['vs_plain_step']:.2f}×"
                 if vm and vm.get("vs_plain_step") is not None else "")
        add(name, r["vs_plain_step"] <= 2.0,
            f"{r['vs_plain_step']:.2f}×{_iqr(r, 'vs_plain_step')}{extra}")


def _digits_targets(sections: dict[str, dict], add: Any) -> None:
    d = sections.get("digits")
    if d is None:
        return
    loop = _row(d, LOOP)
    name = "digits: epoch-as-scan ≥ 5× faster than the per-step loop"
    if loop is None or loop.get("x_slower_than_scan") is None:
        add(name, None, "not measured")
    else:
        v = loop["x_slower_than_scan"]
        detail = f"{v:.2f}×{_iqr(loop, 'x_slower_than_scan')}"
        b = scan_bound(d, _peak(sections))
        if b is not None:
            detail += (f"; the loop costs {b['loop_extra_us_per_step']:.0f} µs per step more "
                       f"than the scan (bare dispatch {b['dispatch_overhead_us_per_step']:.0f} "
                       f"µs), so 5× needs a scan step ≤ "
                       f"{b['scan_us_per_step_needed_for_5x']:.0f} µs; it is "
                       f"{b['scan_us_per_step']:.0f} µs")
            if "matmul_floor_us_per_step" in b:
                detail += (f" (its matmuls alone: {b['matmul_floor_us_per_step']:.0f} µs at "
                           f"the measured float32 matmul peak)")
        add(name, v >= 5.0, detail)
        if b is not None and "matmul_floor_us_per_step" in b:
            ratio = b["scan_us_per_step"] / b["matmul_floor_us_per_step"]
            add("digits: scan step ≤ 3× its matmuls' time at the float32 matmul peak",
                ratio <= 3.0, f"{ratio:.1f}× ({b['scan_us_per_step']:.0f} µs vs "
                              f"{b['matmul_floor_us_per_step']:.0f} µs)")
    for c in (d.get("cli") or [])[:2]:
        name = f"digits: `fdl train` to 97% in ≤ 5 s from process start ({c['label']})"
        hit = c["first_97"]
        if hit is None:
            add(name, False, f"97% never reached (final {c['final_accuracy']}, exit "
                             f"{c['returncode']})")
        else:
            add(name, hit["seconds"] <= 5.0, f"{hit['seconds']:.1f} s (epoch {hit['epoch']})")


def _perex_targets(p: dict | None, add: Any) -> None:
    if p is None:
        return
    speed = "A: per-example grad norms ≥ 10× faster than vmap materialisation"
    equal = "A: per-example grad norms equal to vmap within 1e-5 relative"
    r = _row(p, "fdl.privacy.per_example_grad_norms")
    if r is None or r.get("x_faster_than_vmap") is None:
        add(speed, None, "not measured (no fdl.privacy.per_example_grad_norms row)")
        add(equal, None, "not measured")
        return
    v = r["x_faster_than_vmap"]
    add(speed, v >= 10.0, f"{v:.1f}×")
    e = r.get("max_rel_err_vs_vmap")
    add(equal, None if e is None else e <= 1e-5, "not comparable" if e is None else f"{e:.1e}")


# --------------------------------------------------------------------------- #
# Markdown
# --------------------------------------------------------------------------- #


def _f(v: Any, fmt: str, unit: str = "") -> str:
    return "–" if v is None else format(v, fmt) + unit


def _ms(s: float) -> str:
    ms = 1e3 * s
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _iqr_ms(r: dict) -> str:
    return f"{_ms(r['q1_s'])}–{_ms(r['q3_s'])}"


def _table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _peak_md(s: dict) -> list[str]:
    table = _table(["variant", "dtype", "median ms", "IQR ms", "GFLOP/s (median)",
                    "GFLOP/s (best)"],
                   [[r["variant"], r["dtype"], _ms(r["median_s"]), _iqr_ms(r),
                     f"{r['gflops']:.1f}", f"{r['flops'] / r['min_s'] / 1e9:.1f}"]
                    for r in s["rows"]])
    fastest = {k: f for k, f in (s.get("fastest") or {}).items() if f}
    return [table, "\nPeak used for \"% of peak\": the fastest matmul of any library in this "
            "run, " + ", ".join(f"{k} {f['gflops']:.1f} GFLOP/s ({f['variant']})"
                               for k, f in fastest.items())
            + "; \"% of JAX peak\" uses the JAX matmul's median, "
            + ", ".join(f"{k} {g:.1f} GFLOP/s" for k, g in s["peak_gflops"].items()
                        if not k.endswith("_any")) + "."]


def _mib(b: Any) -> str:
    return "–" if b is None else f"{b / 2 ** 20:.1f}"


def _memory(xla: dict) -> str:
    m = xla.get("memory")
    return f"{_mib(m['temp'])} / {_mib(m['argument'])} / {_mib(m['output'])}" if m else "–"


def _step_md(s: dict) -> list[str]:
    xla_flops = ((_row(s, "fdl") or {}).get("xla") or {}).get("flops")
    intro = (f"{s['config']['flops'] / 1e9:.3g} GFLOP per step ({s['flop_convention']}"
             + (f"; XLA counts {xla_flops / 1e9:.3g} GFLOP in fdl's compiled step"
                if xla_flops else "") + "). Per-step time over "
             f"{s['rows'][0]['rounds'] if s['rows'] else 0} interleaved rounds; "
             "\"% of peak\" is against "
             + ("the float32 matmul interleaved in these rounds (first row) or the fastest "
                "library's, whichever is faster."
                if s.get("peak_interleaved") else
                "the fastest float32 matmul of any library in the peak section, \"% JAX\" "
                "against JAX's.")
             + " XLA memory: the compiled step's temporaries / arguments / outputs, MiB "
             "(`compiled.memory_analysis()`); XLA GFLOP: `compiled.cost_analysis()`.\n")
    head = ["variant", "dtype", "median ms", "IQR ms", "min ms", "GFLOP/s", "% of peak",
            "% JAX", "vs fastest JAX peer", "vs torch", "vs fdl autodiff", "compile s",
            "loss₀", "XLA GFLOP", "XLA temp / arg / out MiB", "fusions/copies"]
    body = []
    for r in s["rows"]:
        xla = r.get("xla") or {}
        ops = xla.get("hlo_ops")
        body.append([
            f"**{r['variant']}**" if r["group"] == "fdl" else r["variant"], r["dtype"],
            _ms(r["median_s"]), _iqr_ms(r), _ms(r["min_s"]),
            _f(r.get("gflops"), ".1f"), _f(r.get("pct_of_peak"), ".0f", "%"),
            _f(r.get("pct_of_jax_peak"), ".0f", "%"),
            _f(r.get("vs_fastest_jax_peer"), ".2f", "×"), _f(r.get("vs_torch"), ".2f", "×"),
            _f(r.get("vs_fdl_autodiff"), ".3f", "×"),
            _f(r.get("compile_s"), ".2f"), _f(r.get("loss0"), ".4f"),
            _f(None if xla.get("flops") is None else xla["flops"] / 1e9, ".3g"),
            _memory(xla), f"{ops['fusion']}/{ops['copy']}" if ops else "–"])
    return [intro, _table(head, body)]


def _dp_md(s: dict) -> list[str]:
    return [_table(["variant", "median ms", "IQR ms", "min ms", "× the ordinary step",
                    "XLA temp / arg / out MiB", "first call s"],
                   [[r["variant"], _ms(r["median_s"]), _iqr_ms(r), _ms(r["min_s"]),
                     _f(r.get("vs_plain_step"), ".2f", "×"), _memory(r.get("xla") or {}),
                     _f(r["first_call_s"], ".2f")] for r in s["rows"]])]


def _digits_md(s: dict, peak: float | None) -> list[str]:
    out = [_table(["variant", "median ms", "IQR ms", "min ms", "× slower than scan",
                   "first call s"],
                  [[r["variant"], _ms(r["median_s"]), _iqr_ms(r), _ms(r["min_s"]),
                    _f(r.get("x_slower_than_scan"), ".1f", "×"), _f(r["first_call_s"], ".2f")]
                   for r in s["rows"]])]
    b = scan_bound(s, peak)
    if b is not None:
        floor = (f"; the step's matmuls ({s['flops_per_step'] / 1e6:.1f} MFLOP) take "
                 f"{b['matmul_floor_us_per_step']:.0f} µs at the measured float32 peak"
                 if "matmul_floor_us_per_step" in b else "")
        out.append(f"\nWhat bounds scan vs loop: the loop of Trainer.step costs "
                   f"{b['loop_extra_us_per_step']:.0f} µs per step more than the scan (a "
                   f"jitted no-op step alone costs {b['dispatch_overhead_us_per_step']:.0f} "
                   f"µs to dispatch; the rest is the standalone step's outputs and the "
                   f"host check that stops pipelining), so loop/scan = 1 + extra/scan step, "
                   f"and 5× needs a scan step of ≤ "
                   f"{b['scan_us_per_step_needed_for_5x']:.0f} µs. The scan step takes "
                   f"{b['scan_us_per_step']:.0f} µs{floor}.")
    e = s.get("epoch_xla")
    if e and e.get("hlo_ops"):
        ops = e["hlo_ops"]
        out.append(f"\nThe compiled epoch (`Trainer._epoch`, one `lax.scan` of "
                   f"{s['steps_per_epoch']} steps): {ops['all']} HLO instructions in the "
                   f"optimised module, {ops['fusion']} fusions, {ops['dot']} dots, "
                   f"{ops['copy']} copies, {ops['while']} while loop(s)"
                   + (f"; the loop body (one step) launches {k['total']} kernels ("
                      + ", ".join(f"{n} {op}" for op, n in sorted(k.items()) if op != "total")
                      + ")" if (k := e.get("loop_body_kernels")) else "") + ".")
    f = s["fit"]
    out.append(f"\nIn-process fit (fresh Trainer, compile included, warm process): "
               f"{'reached' if f['reached'] else 'did NOT reach'} {f['test_accuracy']:.4f} "
               f"test accuracy after {f['epochs']} epochs in {f['seconds']:.2f} s.")
    for c in s.get("cli", []):
        hit = c["first_97"]
        out.append(f"\n`{c['command']}` ({c['label']}): exit {c['returncode']}, "
                   f"wall {c['wall_s']:.2f} s "
                   f"from process start, final test accuracy {c['final_accuracy']}"
                   + (f"; first epoch ≥ 97%: epoch {hit['epoch']} at {hit['seconds']:.2f} s"
                      if hit else "") + ".")
    return out


def _perex_md(s: dict) -> list[str]:
    return [_table(["variant", "median ms", "IQR ms", "min ms", "× faster than vmap",
                    "max rel err vs vmap", "first call s"],
                   [[r["variant"], _ms(r["median_s"]), _iqr_ms(r), _ms(r["min_s"]),
                     _f(r.get("x_faster_than_vmap"), ".1f", "×"),
                     _f(r.get("max_rel_err_vs_vmap"), ".1e"), _f(r["first_call_s"], ".2f")]
                    for r in s["rows"]])]


def to_markdown(results: dict) -> str:
    """The report: machine, versions and command, then each section's title, body and
    notes, the targets and the run-wide notes."""
    env, out = results["environment"], []
    v = env["versions"]
    if results.get("note"):
        out.append(f"**{results['note']}**\n")
    out.append(f"- Machine: {env['cpu']}, {env['cores']} cores, backend {env['backend']} "
               f"({env['device']}); load average at start {env['loadavg_at_start']}, at end "
               f"{env.get('loadavg_at_end')}.")
    out.append("- Versions: python " + env["python"] + ", "
               + ", ".join(f"{k} {val}" for k, val in v.items() if val)
               + (f"; XLA_FLAGS={env['xla_flags']}" if env["xla_flags"] else "")
               + (f"; {env['malloc']}" if env.get("malloc") else ""))
    out.append(f"- Command: `{results['command']}` ({results['seconds']:.0f} s), "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    secs = results["sections"]
    bodies = [("peak", _peak_md)] + [(n, _step_md) for n in STEP_SECTIONS] + [
        ("dp", _dp_md), ("digits", lambda s: _digits_md(s, _peak(secs))),
        ("perex", _perex_md)]
    for name, body in bodies:
        if name in secs:
            s = secs[name]
            out.append(f"\n### {s['title']}\n")
            out += body(s)
            out += [f"- {n}" for n in s["notes"]]
            if s.get("peak_rss_mib") is not None:
                out.append(f"- Peak process memory (getrusage, whole process so far) after "
                           f"this section: {s['peak_rss_mib']:.0f} MiB.")
    out.append("\n### Targets\n")
    if not results["targets"]:
        out.append("(none for the sections run)")
    for t in results["targets"]:
        mark = {True: "target met", False: "MISSED", None: "not measured"}[t["met"]]
        out.append(f"- {t['target']}: **{mark}** ({t['detail']})")
    if results["notes"]:
        out.append("\n### Notes\n")
        out += [f"- {n}" for n in results["notes"]]
    return "\n".join(out) + "\n"


def write_section(path: str, kind: str, md: str) -> None:
    """Replace the text between `<!-- bench:KIND:start -->` and `<!-- bench:KIND:end -->`."""
    start, end = f"<!-- bench:{kind}:start -->", f"<!-- bench:{kind}:end -->"
    with open(path) as f:
        text = f.read()
    if start not in text or end not in text:
        raise SystemExit(f"{path}: markers {start} … {end} not found; add them where the "
                         f"{kind.upper()} figures go")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{start}\n{md}{end}{tail}")
