"""Routing overhead, end to end: closed loop at concurrency 1 over interleaved variants.

Part 2 of :mod:`loadtests.shadow_bench` (see its docstring): ``plain`` (no deployment),
``one_arm`` (routes 100% to the version ``plain`` answers with), ``routed`` (90/10 over two
versions), ``sticky`` (90/10 with a ``sticky_key``) and ``plain2`` (the noise floor), taking
turns request by request in a random order per turn.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import grpc
import numpy as np

from loadtests.models import inputs_from_metadata
from loadtests.shadow_report import ROUTING_LIMIT_US
from sluice.clients import AdminClient, Client
from sluice.clients.messages import build_request, channel_options
from sluice.proto import grpc_service_pb2 as pb

#: The two versions of each copied model (the same file).
LIVE, CANDIDATE = 1, 2
#: Suffixes of the copies: 90/10 over both versions, and all traffic to one of them.
ROUTED_SUFFIX = "_routed"
ONE_ARM_SUFFIX = "_one_arm"
_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_ARM_PARAM = "sluice_arm"
_STICKY_KEYS = 256
_ROUTING_WARMUP = 50  # untimed requests of each variant per round


def median(values: list[Any]) -> float | None:
    """Median of the values that are not None (None: none)."""
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def routing_bench(target: str, model: str, requests: int, rounds_n: int) -> dict[str, Any]:
    """Rounds of requests of the five variants interleaved one by one, so every variant sees
    the same noise; per round and variant p50/p90/p99/mean in us
    and the versions and arms that answered."""
    plain_model, routed_model, one_arm = model, model + ROUTED_SUFFIX, model + ONE_ARM_SUFFIX
    with Client(target, timeout=15.0) as client:
        inputs = inputs_from_metadata(client.model_metadata(plain_model), 1)
    with AdminClient(target, caller="shadow_bench", timeout=10.0) as admin:
        admin.set_routes(routed_model, {LIVE: 90.0, CANDIDATE: 10.0}, reason="bench: 90/10")
        admin.set_routes(one_arm, {CANDIDATE: 100.0}, reason="bench: one arm")
    plain = [build_request(plain_model, inputs).SerializeToString()]
    variants = {
        "plain": plain,
        "one_arm": [build_request(one_arm, inputs).SerializeToString()],
        "routed": [build_request(routed_model, inputs).SerializeToString()],
        "sticky": [build_request(routed_model, inputs, parameters={"sticky_key": f"user-{k}"})
                   .SerializeToString() for k in range(_STICKY_KEYS)],
        "plain2": plain,
    }
    names = list(variants)
    rounds: list[dict[str, Any]] = []
    channel = grpc.insecure_channel(target, options=channel_options(None))
    method = channel.unary_unary(_METHOD)  # bytes in, bytes out
    try:
        for r in range(rounds_n):
            lat, answered = _timed_round(method, [variants[n] for n in names],
                                         requests, seed=r)
            for k, name in enumerate(names):
                us = lat[k] / 1e3
                p50, p90, p99 = np.percentile(us, [50, 90, 99])
                rounds.append({"round": r, "variant": name, "p50_us": float(p50),
                               "p90_us": float(p90), "p99_us": float(p99),
                               "mean_us": float(us.mean()), "answered": answered[k]})
    finally:
        channel.close()
    return {"model": plain_model, "routed_model": routed_model,
            "requests_per_variant_and_round": requests, "rounds": rounds,
            **routing_summary(rounds)}


def _timed_round(method: Any, kinds: list[list[bytes]], count: int, seed: int) -> tuple[
        np.ndarray, list[dict[str, int]]]:
    """``count`` requests of each kind, one of each per turn in a random order (a fixed order
    would give each kind the same predecessor every time, and following a request to the same
    model can be faster); latencies in ns [kind, i]."""
    lat = np.empty((len(kinds), count), np.int64)
    answered: list[dict[str, int]] = [{} for _ in kinds]
    clock = time.perf_counter_ns
    rng = random.Random(seed)
    order = list(range(len(kinds)))
    for i in range(-_ROUTING_WARMUP, count):
        rng.shuffle(order)
        for k in order:
            payloads = kinds[k]
            payload = payloads[i % len(payloads)]
            t0 = clock()
            raw = method(payload, timeout=10.0)
            t1 = clock()
            if i < 0:
                continue
            lat[k, i] = t1 - t0
            # Parsed after the clock stopped, in every variant alike.
            answer = pb.ModelInferResponse.FromString(raw)
            arm = (answer.parameters[_ARM_PARAM].string_param
                   if _ARM_PARAM in answer.parameters else "-")
            key = f"v{answer.model_version} arm {arm}"
            answered[k][key] = answered[k].get(key, 0) + 1
    return lat, answered


def routing_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rounds:
        by_round.setdefault(r["round"], {})[r["variant"]] = r
    variants = list(dict.fromkeys(r["variant"] for r in rounds))
    medians = {v: {k: median([r[k] for r in rounds if r["variant"] == v])
                   for k in ("p50_us", "p90_us", "p99_us", "mean_us")} for v in variants}
    deltas = {v: [one[v]["p50_us"] - one["plain"]["p50_us"] for one in by_round.values()]
              for v in variants if v != "plain"}
    overhead = {v: median(d) for v, d in deltas.items()}
    verdict = {v: None if (o := overhead.get(v)) is None else o <= ROUTING_LIMIT_US
               for v in ("one_arm", "routed", "sticky")}
    return {"medians": medians, "p50_deltas_us": deltas, "p50_overhead_us": overhead,
            "noise_floor_us": overhead.get("plain2"), "pass": verdict}
