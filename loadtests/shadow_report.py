"""Printing a shadow_bench run: the shadow A/B table and the routing table, with verdicts.

Pure formatting over the payload :mod:`loadtests.shadow_bench` writes; nothing here sends a
request.
"""

from __future__ import annotations

from typing import Any

from loadtests.report import fmt

#: Largest live p50/p99 ratio with the shadow on, and routing overhead per request (us).
RATIO_LIMIT = 1.10
ROUTING_LIMIT_US = 20.0


def print_report(payload: dict[str, Any]) -> None:
    s, sh, ro = payload["settings"], payload["shadow"], payload["routing"]
    load = payload["machine"]["load_average_at_start"]
    print(f"\nshadow on {s['model']} b{s['batch']}: C = {payload['capacity_req_s']:,.0f} req/s, "
          f"offered {s['load']:g} x C; load average at start {load[0]:.2f}")
    print("client ms (successes); srv = v1 means over the counted window (ms); shadow: "
          "mirrored/compared/shed, agreement")
    head = (f"{'phase':<8}{'sent/s':>7}{'good/s':>7}{'p50':>7}{'p95':>7}{'p99':>7}{'err':>5}"
            f"{'lag99':>6}{'srvE2E':>7}{'srvQ':>6}{'srvC':>6}  shadow")
    print(head + "\n" + "-" * len(head))
    for r in sh["phases"]:
        srv = r["server_v1"] or {}
        errors = r["shed"] + sum(r["other_errors"].values())
        shadow = r["shadow"]
        text = "-" if not shadow else (
            f"{shadow['mirrored']}/{shadow['compared']}/{shadow['shed']} "
            f"agree {fmt(shadow['agreement'], '.3f', 0)}"
            + (f" cand.err {shadow['candidate_errors']}" if shadow["candidate_errors"] else ""))
        flag = " " if r["generator_kept_up"] else "!"
        print(f"{r['name']:<7}{flag}{r['sent_req_s']:>7.0f}{r['goodput_req_s']:>7.0f}"
              f"{fmt(r['accepted_p50_ms'], '.2f', 7)}{fmt(r['accepted_p95_ms'], '.2f', 7)}"
              f"{fmt(r['accepted_p99_ms'], '.2f', 7)}{errors:>5}"
              f"{fmt(r['generator_lag_p99_ms'], '.1f', 6)}"
              f"{fmt(srv.get('e2e_mean_ms'), '.2f', 7)}{fmt(srv.get('queue_mean_ms'), '.2f', 6)}"
              f"{fmt(srv.get('compute_mean_ms'), '.2f', 6)}"
              f"  {text}")
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    def triple(arm: str) -> str:
        return "/".join(fmt(sh[f"{arm}_accepted_{q}_ms"], ".2f", 0) for q in ("p50", "p95", "p99"))

    print(f"medians over {sh['rounds']} rounds, p50/p95/p99: A {triple('A')} ms, "
          f"B {triple('B')} ms")
    for q in ("p50", "p99"):
        ratios = ", ".join(f"{x:.2f}" for x in sh[f"{q}_ratios"])
        print(f"  {verdict[sh[f'{q}_pass']]}  live {q} B/A = {fmt(sh[f'{q}_ratio'], '.3f', 0)} "
              f"(median of rounds: {ratios}; target <= {RATIO_LIMIT:.2f})")
    print(f"\nrouting: {ro['model']} (no deployment) vs {ro['routed_model']} (v1 90 / v2 10), "
          f"concurrency 1, {ro['requests_per_variant_and_round']} requests per variant and "
          "round, interleaved; client-observed us, medians of rounds")
    head = f"{'variant':<8}{'p50':>8}{'p90':>8}{'p99':>8}{'mean':>8}{'p50-plain':>10}  answered by"
    print(head + "\n" + "-" * len(head))
    for v, m in ro["medians"].items():
        answered: dict[str, int] = {}
        for r in ro["rounds"]:
            if r["variant"] == v:
                for k, n in r["answered"].items():
                    answered[k] = answered.get(k, 0) + n
        total = sum(answered.values()) or 1
        shares = ", ".join(f"{k} {100 * n / total:.1f}%" for k, n in sorted(answered.items()))
        print(f"{v:<8}{m['p50_us']:>8.1f}{m['p90_us']:>8.1f}{m['p99_us']:>8.1f}"
              f"{m['mean_us']:>8.1f}{fmt(ro['p50_overhead_us'].get(v), '+.1f', 10)}  {shares}")
    floor = ", ".join(f"{d:+.1f}" for d in ro["p50_deltas_us"].get("plain2", []))
    print(f"noise floor: plain2 - plain p50 = {fmt(ro['noise_floor_us'], '+.1f', 0)} us "
          f"(median of rounds: {floor})")
    for v in ("one_arm", "routed", "sticky"):
        print(f"  {verdict[ro['pass'][v]]}  {v}: p50 overhead "
              f"{fmt(ro['p50_overhead_us'].get(v), '+.1f', 0)} us (target <= "
              f"{ROUTING_LIMIT_US:g} us)")
    end = payload["machine"]["load_average_at_end"]
    print(f"load average at end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")
